"""The Python API in peft's shape, and open-vocabulary prediction.

``get_ltuning_model(model, config, labels=...)`` wraps a frozen transformers model (or a name / folder)
into an :class:`~ltuning.model.LTuningModel`; ``save_pretrained`` / ``LTuningModel.from_pretrained``
write and read the adapter folder; ``predict`` returns label names.

Because L-Tuning's labels are text, a trained LT-prefix or LT-prompt adapter can score label names it
never saw: :func:`predict` with ``candidate_labels`` encodes the new label texts with the frozen backbone
and runs them through the trained method, like the zero-shot-classification pipeline of transformers.
The classic prefix / prompt baselines have a fixed K-way head and cannot.

Example (a tiny random BERT, so the predictions are arbitrary but the shapes are real):
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from ltuning import LTuningConfig, get_ltuning_model
    >>> tokenizer = _doctest_tokenizer()
    >>> _ = torch.manual_seed(0)
    >>> bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                             num_attention_heads=4, intermediate_size=64))
    >>> model = get_ltuning_model(bert, LTuningConfig(method="lt-prompt"), labels=["negative", "positive"],
    ...                           tokenizer=tokenizer)
    >>> model.print_trainable_parameters()
    trainable params: 2,114 || all params: 38,818 || trainable%: 5.4459
    >>> model.predict(["what a boring film", "i loved it"])  # doctest: +ELLIPSIS
    ['...', '...']
    >>> out = model.predict(["i loved it"], candidate_labels=["bad", "good", "fun"], return_scores=True)
    >>> sorted(out[0]["scores"]), round(sum(out[0]["scores"].values()), 4)
    (['bad', 'fun', 'good'], 1.0)
    >>> model.predict(["i loved it"], candidate_labels=["bad", "good", "fun"], multi_label=True,
    ...               threshold=0.0)  # every sigmoid score is >= 0
    [['bad', 'good', 'fun']]
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import Backbone
from .config import LTuningConfig
from .errors import ConfigError
from .loading import load_backbone
from .methods import Injection
from .model import LTuningModel, check_texts

TextInput = str | tuple[str, str]


# ---------------------------------------------------------------------- building
def _as_backbone(model: Backbone | nn.Module | str, tokenizer=None, trust_remote_code: bool = False) -> Backbone:
    """A Backbone from a Backbone, a transformers model (+ tokenizer) or a name / folder / hub id."""
    if isinstance(model, Backbone):
        return model
    if isinstance(model, str | Path):
        if tokenizer is not None:
            raise ConfigError("tokenizer= is only for a model object; a name or folder brings its own tokenizer")
        return load_backbone(str(model), trust_remote_code=trust_remote_code)
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ConfigError(f"model must be a transformers model, a Backbone, or a name / folder; got {type(model).__name__}")
    name = getattr(model.config, "_name_or_path", "") or "custom"
    if tokenizer is None:
        if name == "custom":
            raise ConfigError(f"{type(model).__name__} was not loaded from a folder or hub id: pass tokenizer=")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the tokenizer of {name!r} ({str(e).splitlines()[0]}); pass tokenizer=") from None
    return Backbone(model, tokenizer, name=name)


def _label_lists(labels) -> tuple[list[str], list[str] | None]:
    """Names and (optional) texts from a list of names, a mapping name -> text, or a datasets ClassLabel."""
    if labels is None:
        return [], None
    if hasattr(labels, "names") and not isinstance(labels, Mapping):  # datasets.ClassLabel
        return [str(n) for n in labels.names], None
    if isinstance(labels, Mapping):
        return [str(k) for k in labels], [str(v) for v in labels.values()]
    if isinstance(labels, str):
        raise ConfigError(f"labels must be a list of names, not the string {labels!r}")
    return [str(n) for n in labels], None


def get_ltuning_model(model: Backbone | nn.Module | str, config: LTuningConfig | None = None,
                      labels: Sequence[str] | Mapping[str, str] | Any = None, tokenizer=None,
                      trust_remote_code: bool = False) -> LTuningModel:
    """Wrap a frozen model for L-Tuning, as ``peft.get_peft_model`` does.

    Args:
        model: a transformers model (``BertModel``, ``LlamaModel``, or a model with a ``base_model`` such as
            ``AutoModelForSequenceClassification``), a :class:`Backbone`, or a name / folder / hub id
            (``"minilm"``, ``"smollm2"``).
        config: method, lengths, pooling (default: ``LTuningConfig()``, i.e. lt-prefix). Not modified.
        labels: class names in class-index order, a mapping name -> label text (e.g.
            ``{"neg": "negative review", "pos": "positive review"}``), or a ``datasets.ClassLabel``.
            Overrides ``config.label_names`` / ``label_texts``.
        tokenizer: the model's tokenizer (needed for a model object not loaded from a folder or hub id).
    Returns: an :class:`LTuningModel` whose backbone is frozen; only the method's parameters train.
    Raises:
        ConfigError: fewer than 2 labels, a model object without a tokenizer, a bad config.
        UnsupportedModelError: a model family ltuning has no recipe for.
    """
    cfg = LTuningConfig.from_dict((config or LTuningConfig()).to_dict())  # a copy: fields get filled in
    names, texts = _label_lists(labels)
    if names:
        cfg = LTuningConfig.from_dict({**cfg.to_dict(), "label_names": names, "label_texts": texts or []})
    if cfg.num_labels < 2:
        raise ConfigError("give the labels: get_ltuning_model(model, config, labels=['negative', 'positive'])")
    backbone = _as_backbone(model, tokenizer, trust_remote_code)
    if isinstance(model, str | Path) or cfg.base_model == LTuningConfig().base_model:
        cfg.base_model = str(model) if isinstance(model, str | Path) else backbone.name
    return LTuningModel(backbone, cfg)


def load_ltuning_model(directory: str | Path, model: Backbone | nn.Module | str | None = None, tokenizer=None,
                       trust_remote_code: bool = False) -> LTuningModel:
    """Load an adapter folder onto its backbone (the one it names, or ``model``)."""
    from .adapter import load_adapter

    if model is None or isinstance(model, str | Path):
        return load_adapter(directory, model=None if model is None else str(model), trust_remote_code=trust_remote_code)
    return load_adapter(directory, backbone=_as_backbone(model, tokenizer, trust_remote_code))


# ---------------------------------------------------------------------- open-vocabulary scoring
def _warn_caller(message: str) -> None:
    """A UserWarning attributed to the first frame outside ltuning and torch (the user's call)."""
    import sys

    skip = (str(Path(__file__).resolve().parent), str(Path(torch.__file__).resolve().parent))
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)


def candidate_injection(model: LTuningModel, label_texts: Sequence[str]) -> Injection:
    """The trained method's prefix or prompt for new label texts.

    The label texts are encoded by the frozen backbone. LT-prefix's Z takes exactly l = the adapter's
    ``label_length`` inputs, so its label texts are padded / truncated to l (a warning names the ones cut);
    LT-prompt maps each token on its own and takes the texts at their full length.
    """
    if not model.label_conditioned:
        raise ConfigError(
            f"{model.config.method} has a fixed {model.num_labels}-way head over its training labels "
            f"{model.label_names}; it cannot score other label texts. Open-vocabulary labels need a "
            "label-conditioned method (lt-prefix or lt-prompt)"
        )
    texts = [str(t) for t in label_texts]
    for t in texts:
        if not t.strip():
            raise ConfigError(f"empty candidate label in {texts}")
    backbone = model.backbone
    longest = backbone.label_token_length(texts)
    length = model.method.candidate_label_length(longest)
    if longest > length:
        ids = [tuple(backbone.tokenizer(t, truncation=True, max_length=length)["input_ids"]) for t in texts]
        seen: dict[tuple, str] = {}
        for t, i in zip(texts, ids, strict=True):
            if i in seen:  # the same l tokens: the same prefix, so the same score for every text
                raise ConfigError(
                    f"{model.config.method}: candidate labels {seen[i]!r} and {t!r} are identical within the "
                    f"adapter's label_length={length} tokens ({backbone.tokenizer.decode(list(i))!r}): its Z "
                    f"reads exactly l={length} label tokens, so they would always tie. Use label texts that "
                    "differ within their first tokens (e.g. no hypothesis_template that puts the label "
                    "last), or train with a larger --label-length")
            seen[i] = t
        cut = [t for t in texts if backbone.label_token_length([t]) > length]
        _warn_caller(f"{model.config.method}: candidate labels {cut} are longer than the adapter's "
                     f"label_length={length} tokens and are truncated; train with a larger "
                     "label_length to score longer label texts")
    states, mask = backbone.encode_labels(texts, length)  # (K', l, d), (K', l)
    inj = model.method(states.to(model.label_states.dtype), mask)
    if model.method.uses_label_vectors:
        inj.label_vectors = backbone.encode_label_vectors(texts, model.pooling).to(model.label_states.dtype)
    return inj


def score_candidates(model: LTuningModel, texts: Sequence[TextInput], label_texts: Sequence[str],
                     batch_size: int = 64) -> torch.Tensor:
    """(N, K') pair logits of N texts against K' label texts the adapter need not have seen: the model's
    own scoring (:meth:`LTuningModel.score_texts`) with the candidates' injection."""
    with torch.inference_mode():
        inj = candidate_injection(model, label_texts)
    return model.score_texts(list(texts), batch_size, injection=inj)


def _apply_template(names: list[str], template: str | None) -> list[str]:
    """Label text of each name: the template with its one ``{}`` replaced by the name (other braces are
    kept as written)."""
    if template is None:
        return list(names)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ConfigError(f"hypothesis_template must contain '{{}}' exactly once, where the label goes, "
                          f"got {template!r}")
    return [template.replace("{}", str(n)) for n in names]


def predict(model: LTuningModel, texts: TextInput | Sequence[TextInput], batch_size: int = 64,
            candidate_labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
            hypothesis_template: str | None = None, multi_label: bool = False, threshold: float = 0.5,
            return_scores: bool = False):
    """Classify texts; see :meth:`LTuningModel.predict`."""
    pairs = model.config.text_pairs
    # One input: a string, or one (premise, hypothesis) tuple, unless the model is known to be trained on
    # single texts (text_pairs False): then a tuple of two strings is two texts.
    single = isinstance(texts, str) or (pairs is not False and isinstance(texts, tuple) and len(texts) == 2
                                        and all(isinstance(t, str) for t in texts))
    items = [texts] if single else list(texts)
    if isinstance(candidate_labels, str):  # "bad, good", as the zero-shot-classification pipeline takes
        candidate_labels = [c.strip() for c in candidate_labels.split(",") if c.strip()]
        if not candidate_labels:
            raise ConfigError("candidate_labels is empty: give label names, e.g. ['bad', 'good'] or 'bad,good'")
    if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    check_texts(items, batch_size, pairs=pairs)
    if not items:
        return []
    conditioned = candidate_labels is not None or hypothesis_template is not None or multi_label
    if conditioned and not model.label_conditioned:
        what = ("candidate_labels" if candidate_labels is not None else
                "hypothesis_template" if hypothesis_template is not None else "multi_label")
        raise ConfigError(
            f"{what} needs a label-conditioned method (lt-prefix or lt-prompt): {model.config.method} has a "
            f"fixed {model.num_labels}-way softmax head over {model.label_names}"
        )
    # One label set per text: group texts that share one, score each group in batches.
    if candidate_labels is None:
        label_sets = [tuple(model.label_names)] * len(items)
    elif len(candidate_labels) and not isinstance(candidate_labels[0], str):
        if len(candidate_labels) != len(items):
            raise ConfigError(f"{len(candidate_labels)} candidate label lists for {len(items)} texts; give one "
                              "list per text, or one list for all")
        label_sets = [tuple(str(c) for c in cs) for cs in candidate_labels]
    else:
        label_sets = [tuple(str(c) for c in candidate_labels)] * len(items)
    for ls in set(label_sets):
        if len(ls) < (1 if multi_label else 2):
            raise ConfigError(f"need at least {1 if multi_label else 2} candidate labels, got {list(ls)}")
        if len(set(ls)) != len(ls):
            raise ConfigError(f"candidate labels must be unique, got {list(ls)}")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, ls in enumerate(label_sets):
        groups.setdefault(ls, []).append(i)
    logits: list[torch.Tensor | None] = [None] * len(items)
    for ls, idx in groups.items():
        if candidate_labels is None and hypothesis_template is None:
            scores = model.score_texts([items[i] for i in idx], batch_size)  # the cached training labels
        else:
            names = list(ls)
            if candidate_labels is None:  # a template over the adapter's own label texts
                names = model.config.label_texts
            scores = score_candidates(model, [items[i] for i in idx], _apply_template(names, hypothesis_template),
                                      batch_size)
        for j, i in enumerate(idx):
            logits[i] = scores[j]
    results = []
    for ls, z in zip(label_sets, logits, strict=True):
        probs = torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)
        scores = dict(zip(ls, (round(float(p), 6) for p in probs), strict=True))
        if multi_label:
            chosen: Any = [n for n, p in zip(ls, probs.tolist(), strict=True) if p >= threshold]
            results.append({"labels": chosen, "scores": scores} if return_scores else chosen)
        else:
            top = ls[int(z.argmax())]
            results.append({"label": top, "scores": scores} if return_scores else top)
    return results[0] if single else results


def _doctest_tokenizer():
    """The word-level tokenizer the module docstring uses (no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "the a film movie was very good bad great boring fun loved i it what negative positive".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")
