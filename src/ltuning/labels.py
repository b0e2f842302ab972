"""Label sets: label texts -> token ids -> the frozen backbone's encodings, with every rule on the way.

The model's own labels (:class:`~ltuning.model.LTuningModel`, trained or loaded from an adapter) and
open-vocabulary candidates (:func:`ltuning.prediction.candidate_injection`) are both built here, by
:meth:`LabelSet.build`, so the same rules hold wherever label texts meet a backbone:

- a label text is a non-empty string;
- l (``label_length``) is in [1, :func:`max_label_length`]: the label tokens run through the frozen model
  itself, so they must fit its position table. By default l is the longest label text (special tokens
  included), which must fit too: a label text longer than the table is a ``ConfigError`` naming it, not an
  ``IndexError`` from the embedding. A given l cuts longer label texts to their first l tokens, as
  ``max_length`` cuts texts;
- an LT method reads exactly l label tokens, so l cannot be below the tokens the tokenizer keeps of any
  label (its special tokens);
- two labels of an LT method whose token ids, as the injection reads them (cut to l), are equal would get
  the same prefix / prompt, so every text would score them the same (a tie, whatever the training): an
  error naming both. Identical texts, distinct texts the tokenizer maps to the same ids (emoji on a BERT
  vocabulary become ``[UNK]``) and texts that differ only after their first l tokens all count.

:class:`~ltuning.backbones.Backbone` does the mechanics (the tokenizer call, the frozen forward); this
module decides what is encoded and refuses what cannot work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .backbones import Backbone
from .config import TextPooling
from .errors import ConfigError


def max_label_length(backbone: Backbone) -> int:
    """The most label tokens ``backbone`` can run (its position table, else its context): the bound of l."""
    return backbone.max_label_tokens()


def check_label_length(backbone: Backbone, length: int | None, option: str = "label_length",
                       model_name: str | None = None) -> None:
    """Refuse an l outside [1, :func:`max_label_length`] (None: the default, the longest label, checked when
    it is computed). ``option`` and ``model_name`` name the setting and the backbone in the message.

    Raises: ConfigError.
    """
    context = max_label_length(backbone)
    if length is not None and not 1 <= length <= context:
        raise ConfigError(f"{option} must be in [1, {context}] for {model_name or backbone.name}, got {length}")


def label_token_lengths(backbone: Backbone, texts: Sequence[str], what: str = "label text") -> list[int]:
    """Tokens of each label text, whole (special tokens included). ``what`` names the texts in the error.

    Raises: ConfigError for an empty text.
    """
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ConfigError(f"empty {what} in {list(texts)}")
    return [backbone.label_token_length([t]) for t in texts]


def default_label_length(backbone: Backbone, texts: Sequence[str], what: str = "label text") -> int:
    """l when none is given: the longest label text's tokens, which must fit :func:`max_label_length`.

    Raises: ConfigError naming the longest text when it does not fit.
    """
    lengths = label_token_lengths(backbone, texts, what)
    longest = max(lengths)
    context = max_label_length(backbone)
    if longest > context:
        text = texts[lengths.index(longest)]
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ConfigError(
            f"{what} {shown!r} is {longest} tokens on {backbone.name}, more than the {context} positions the model "
            f"can run; shorten it (or train with label_length, --label-length, of at most {context}: label texts "
            "are then cut to their first l tokens, as texts are cut to max_length)")
    return longest


#: What to do about two training labels that tie: (whole texts, texts cut to l).
_TRAINING_REMEDY = ("give each label its own text, in words the tokenizer knows (--label-texts)",
                    "give each label a text that differs within its first l tokens (--label-texts), or a larger "
                    "label_length (--label-length)")


@dataclass
class LabelSet:
    """K label texts as the frozen backbone encodes them, checked (see the module docstring).

    texts: the K label texts; token_ids: the real tokens each label's encoding holds (cut to l);
    length: l, the label positions the method reads; states (K, l', d) (last hidden states, zero at
    padding) and mask (K, l') (l' = l, except for a classic method whose l is below the tokenizer's special
    tokens: it reads no label tokens); cut: the texts longer than l, whose encodings hold their first l tokens;
    vectors (K, d): the frozen model's pooled embedding of each whole text (:meth:`encode_vectors`), or None.
    """

    texts: list[str]
    token_ids: list[tuple[int, ...]]
    length: int
    states: torch.Tensor
    mask: torch.Tensor
    cut: list[str] = field(default_factory=list)
    vectors: torch.Tensor | None = None

    @classmethod
    def build(cls, backbone: Backbone, texts: Sequence[str], length: int | None = None, *,
              label_conditioned: bool = True, names: Sequence[str] | None = None, what: str = "label text",
              length_name: str = "label_length", remedy: tuple[str, str] = _TRAINING_REMEDY) -> LabelSet:
        """Check and encode ``texts`` on ``backbone``, padded / cut to ``length`` (None: the longest text).

        ``label_conditioned``: the set feeds an LT method, which reads exactly l label tokens and tells
        labels apart by them (the l and distinctness rules apply); the classic baselines read no label
        tokens (their K-way head tells labels apart by index), so neither rule applies to them.
        ``names`` (the label names), ``what`` (what the texts are), ``length_name`` (whose l it is) and
        ``remedy`` (what to do about a tie: of whole texts, of texts cut to l) word the errors.

        Raises: ConfigError (see the module docstring).
        """
        texts = list(texts)
        full = label_token_lengths(backbone, texts, what)
        if length is None:
            length = default_label_length(backbone, texts, what)
        check_label_length(backbone, length, length_name)
        enc = backbone.label_tokens(texts, length)
        mask = enc["attention_mask"].bool()
        # the tokenizer's own tokens ([CLS], [SEP], <s>, padding) are not the label's; [UNK] stands for a word
        tok = backbone.tokenizer
        special = set(tok.all_special_ids) - {tok.unk_token_id}
        words = [[i for i in ids if i not in special] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        empty = [t for t, w in zip(texts, words, strict=True) if not w]
        if empty or not mask.any(-1).all():
            empty = empty or [t for t, ok in zip(texts, mask.any(-1).tolist(), strict=True) if not ok]
            raise ConfigError(f"{what}s {empty} tokenize to nothing on {backbone.name} (only characters its "
                              "tokenizer drops, such as zero-width spaces); give label texts with real words")
        # A tokenizer cannot cut a label below its own special tokens.
        if label_conditioned and mask.shape[1] != length:
            raise ConfigError(
                f"{length_name}={length} is too short for {backbone.name}, whose tokenizer keeps "
                f"{mask.shape[1]} tokens of the label texts {texts} (its special tokens around each "
                "text); use a larger label_length, or none (the longest label)")
        kept = [any(i not in special for i in row[m].tolist()) for row, m in zip(enc["input_ids"], mask, strict=True)]
        if label_conditioned and not all(kept):
            raise ConfigError(
                f"{length_name}={length} is too short for {backbone.name}: the label tokens it keeps of "
                f"{[t for t, k in zip(texts, kept, strict=True) if not k]} are only the tokenizer's special tokens "
                "(no word of the label); use a larger label_length, or none (the longest label)")
        ids = [tuple(row[m].tolist()) for row, m in zip(enc["input_ids"], mask, strict=True)]
        cut = [t for t, n in zip(texts, full, strict=True) if n > length]
        if label_conditioned:
            _check_distinct(backbone, texts, ids, cut, length, names=names, what=what, length_name=length_name,
                            remedy=remedy)
        states, mask = backbone.encode_label_tokens(enc)
        return cls(texts=texts, token_ids=ids, length=length, states=states, mask=mask, cut=cut)

    def encode_vectors(self, backbone: Backbone, pooling: TextPooling) -> torch.Tensor:
        """(K, d) the frozen model's pooled embedding of each whole label text (the similarity head's e(y)),
        kept in :attr:`vectors` and returned."""
        self.vectors = backbone.encode_label_vectors(self.texts, pooling)
        return self.vectors


def _check_distinct(backbone: Backbone, texts: list[str], ids: list[tuple[int, ...]], cut: list[str], length: int,
                    *, names: Sequence[str] | None, what: str, length_name: str, remedy: tuple[str, str]) -> None:
    """Refuse two labels whose token ids (as their encodings hold them) are equal: the same prefix / prompt
    for both, so every text would score them the same."""
    seen: dict[tuple[int, ...], int] = {}
    for j, key in enumerate(ids):
        i = seen.setdefault(key, j)
        if i == j:
            continue
        a, b = texts[i], texts[j]
        labels = "" if names is None else f" (labels {names[i]!r} and {names[j]!r})"
        tokens = backbone.tokenizer.decode(list(key))
        within_l = a != b and (a in cut or b in cut)
        if a == b:
            what_happened = f"{what}s must be unique, but {a!r} is given twice{labels}"
        elif within_l:
            what_happened = (f"{what}s {a!r} and {b!r}{labels} are identical within {length_name}={length} tokens "
                             f"({tokens!r})")
        else:
            what_happened = f"{what}s {a!r} and {b!r}{labels} tokenize to the same tokens on {backbone.name} ({tokens!r})"
        raise ConfigError(f"{what_happened}: they would get the same prefix / prompt and always tie; "
                          f"{remedy[1] if within_l else remedy[0]}")
