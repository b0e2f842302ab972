"""Prediction below the model: input checks, open-vocabulary scoring and :func:`predict`.

:class:`~ltuning.model.LTuningModel` imports this module (its ``predict`` delegates to :func:`predict`);
this module never imports the model, it only calls the model object it is given.
:mod:`ltuning.api` re-exports :func:`predict`, :func:`candidate_injection` and :func:`score_candidates`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import check_arg, is_number, is_text, is_utf8, shown, shown_bytes
from .errors import ConfigError, DataError
from .labels import LabelSet, label_token_lengths

if TYPE_CHECKING:
    from .methods import Injection

#: What this module is handed: an :class:`ltuning.model.LTuningModel` (not imported here, not even for type
#: checking: the model imports this module, and imports run one way).
LTuningModel = torch.nn.Module

TextInput = str | tuple[str, str]


def check_batch_size(batch_size, name: str = "batch_size") -> None:
    """A batch size is a positive integer (not a bool). Raises: ConfigError naming ``name``."""
    check_arg(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1, name,
              "a positive integer", batch_size)


def text_list(texts) -> list:
    """``texts`` as a list: any iterable of texts (a list, tuple, generator, pandas Series), but not a string,
    bytes, a mapping or a non-iterable (None, a number), which would be iterated into nonsense or fail inside.

    Raises: DataError naming ``texts``.
    """
    ok = isinstance(texts, Iterable) and not isinstance(texts, str | bytes | bytearray | Mapping)
    check_arg(ok, "texts", "a list of strings or of (premise, hypothesis) pairs", texts, DataError)
    return list(texts)


def check_texts(texts: list, batch_size: int | None = None, pairs: bool | None = None) -> None:
    """Inputs of prediction: non-empty UTF-8 strings, or (premise, hypothesis) pairs of them, not mixed; every
    item a pair for a model trained on pairs (``config.text_pairs`` True). A ``batch_size`` must be a
    positive integer.

    Raises: DataError (texts), ConfigError (batch size).
    """
    if batch_size is not None:
        check_batch_size(batch_size)
    first_is_pair = bool(texts) and isinstance(texts[0], tuple | list)
    for i, t in enumerate(texts):
        is_pair = isinstance(t, tuple | list)
        parts = t if is_pair else (t,)
        if is_pair and len(parts) != 2:
            raise DataError(f"texts: text {i} has {len(parts)} parts; a sentence pair has exactly 2: {shown(t)}")
        for p in parts:
            if isinstance(p, str) and not is_utf8(p):
                raise DataError(f"texts: text {i} is not UTF-8 text ({shown_bytes(p)}: lone surrogates, as "
                                "surrogateescape decoding leaves for bytes that are not UTF-8); give UTF-8 text")
            if not is_text(p):
                raise DataError(f"texts: text {i} is empty or not a string: {shown(t)}"
                                + ("; decode bytes to str first" if isinstance(p, bytes | bytearray) else ""))
        if is_pair != first_is_pair:
            raise DataError(f"texts: text {i} is {'a pair' if is_pair else 'a single text'} but text 0 is not: give "
                            "all single texts or all (premise, hypothesis) pairs in one call")
        if pairs and not is_pair:
            raise DataError(f"texts: text {i} is a single text, but this adapter was trained on (premise, hypothesis) "
                            f"pairs: give each input as a pair, e.g. ('A man sleeps.', 'A person rests.'): {shown(t)}")


def check_candidate_labels(candidate_labels) -> None:
    """None, a comma-separated string, a list of label texts, or one such list per text (lists of non-empty
    UTF-8 strings). Raises: ConfigError naming ``candidate_labels``."""
    if candidate_labels is None or isinstance(candidate_labels, str):
        return
    what = "a list of label names, one such list per text, or a comma-separated string"
    ok = isinstance(candidate_labels, list | tuple)
    if ok and candidate_labels and not isinstance(candidate_labels[0], str):  # one list per text
        ok = all(isinstance(cs, list | tuple) and all(is_text(c) for c in cs) for cs in candidate_labels)
    elif ok:
        ok = all(is_text(c) for c in candidate_labels)
    check_arg(ok, "candidate_labels", what + " (non-empty UTF-8 strings)", candidate_labels)


#: multi_label's threshold when none is given: a label is predicted when its sigmoid reaches it
DEFAULT_THRESHOLD = 0.5


def check_options(multi_label, threshold, return_scores=False, hypothesis_template=None) -> None:
    """The flags of :func:`predict`: bools, a probability, a template string. Raises: ConfigError naming the
    argument."""
    check_arg(isinstance(multi_label, bool), "multi_label", "True or False", multi_label)
    check_arg(isinstance(return_scores, bool), "return_scores", "True or False", return_scores)
    check_arg(threshold is None or (is_number(threshold) and math.isfinite(threshold) and 0.0 <= threshold <= 1.0),
              "threshold", "a probability in [0, 1]", threshold)
    if threshold is not None and multi_label is False:  # it selects labels by their sigmoids: ignored otherwise
        raise ConfigError("threshold applies to multi_label=True only (the labels whose sigmoid score reaches it)")
    check_arg(hypothesis_template is None or (isinstance(hypothesis_template, str) and is_utf8(hypothesis_template)
                                              and hypothesis_template.count("{}") == 1),
              "hypothesis_template", "a string with '{}' exactly once, where the label goes", hypothesis_template)


# ---------------------------------------------------------------------- open-vocabulary scoring
#: Where :func:`_warn_caller` puts its messages instead of warning, while :func:`collected_warnings` runs (the
#: server hands them to the client that asked); per thread and per task, as a context variable.
_COLLECTOR: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("ltuning_warnings", default=None)


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """The messages prediction warns about inside the block (a candidate label cut to l, multi_label on a
    listwise adapter), collected into the list it yields instead of issued as warnings."""
    notes: list[str] = []
    token = _COLLECTOR.set(notes)
    try:
        yield notes
    finally:
        _COLLECTOR.reset(token)


def _warn_caller(message: str) -> None:
    """A UserWarning attributed to the first frame outside ltuning and torch (the user's call); inside
    :func:`collected_warnings`, the message goes to its list instead."""
    notes = _COLLECTOR.get()
    if notes is not None:
        if message not in notes:
            notes.append(message)
        return
    skip = (str(Path(__file__).resolve().parent), str(Path(torch.__file__).resolve().parent))
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)


#: ``unseen_label_head`` values: how label texts the score head was not trained on are scored
UNSEEN_LABEL_HEADS = ("trained", "cosine")


def check_unseen_label_head(value) -> None:
    check_arg(value in UNSEEN_LABEL_HEADS, "unseen_label_head", " or ".join(map(repr, UNSEEN_LABEL_HEADS)), value)


def trained_label_texts(model: LTuningModel) -> set[str]:
    """The label texts the adapter's score head was trained on: its labels', and every task's of a multi-task
    adapter."""
    texts = set(model.config.label_texts or ())
    for task in (model.config.tasks or {}).values():
        texts.update(task.get("label_texts") or ())
    return texts


def candidate_injection(model: LTuningModel, label_texts: Sequence[str],
                        unseen_label_head: str = "trained") -> Injection:
    """The trained method's prefix or prompt for new label texts.

    The label texts are checked and encoded by the frozen backbone (:class:`~ltuning.labels.LabelSet`:
    candidates that tokenize to the same tokens the method reads are an error, not a tie). LT-prefix's Z
    takes exactly l = the adapter's ``label_length`` inputs, so its label texts are padded / truncated to l
    (a warning names the ones cut); LT-prompt maps each token on its own and takes the texts at their full
    length.

    ``unseen_label_head``: how a candidate set with a label text the score head was not trained on
    (:func:`trained_label_texts`) is scored, for the heads that read the labels' embeddings and learn a direction
    (similarity, anchored). ``"trained"`` (the default): the trained head, as every label. ``"cosine"``: the
    frozen similarity of the label-prefixed text and the label's embedding (the cosine head's formula,
    ``Injection.frozen_head``) for the whole set. The trained head fits the training labels' directions (the
    text map W measurably so): it helps with other wordings of the same labels and hurts on another task's labels,
    where the label-conditioned prefix alone carries over (BENCHMARKS.md, "One adapter for several tasks"). Label texts all
    from the training set, and the paper and cosine heads, score the same either way.
    """
    check_unseen_label_head(unseen_label_head)
    if not model.label_conditioned:
        raise ConfigError(
            f"{model.config.method} has a fixed {model.num_labels}-way head over its training labels "
            f"{model.label_names}; it cannot score other label texts. Open-vocabulary labels need a "
            "label-conditioned method (lt-prefix or lt-prompt)"
        )
    texts = [str(t) for t in label_texts]
    backbone = model.backbone
    longest = max(label_token_lengths(backbone, texts, "candidate label"))
    length = model.method.candidate_label_length(longest)
    # length None where the method takes the texts whole: a text longer than the position table is then
    # refused by name
    labels = LabelSet.build(
        backbone, texts, None if length == longest else length, what="candidate label",
        length_name="the adapter's label_length",
        remedy=("give candidates that differ, in words the tokenizer knows",
                "use label texts that differ within their first tokens (e.g. no hypothesis_template that puts "
                "the label last), or train with a larger --label-length"))
    model.method.check_labels(model.config, texts, labels.mask.sum(-1).tolist(), backbone.name, "candidate labels",
                              remedy="give candidate labels of two or more tokens (longer label texts, or a "
                                     "hypothesis template such as 'The review is {}.')")
    if labels.cut:
        _warn_caller(f"{model.config.method}: candidate labels {labels.cut} are longer than the adapter's "
                     f"label_length={length} tokens and are truncated; train with a larger label_length to score "
                     "longer label texts")
    inj = model.method(labels.states.to(model.label_states.dtype), labels.mask)  # (K', l, d), (K', l)
    if model.method.uses_label_vectors:
        inj.label_vectors = labels.encode_vectors(backbone, model.pooling).to(model.label_states.dtype)
        inj.frozen_head = (unseen_label_head == "cosine" and model.method.score_head.learns_direction
                           and not set(texts) <= trained_label_texts(model))
    return inj


def score_candidates(model: LTuningModel, texts: Sequence[TextInput], label_texts: Sequence[str],
                     batch_size: int = 64, unseen_label_head: str = "trained") -> torch.Tensor:
    """(N, K') pair logits of N texts against K' label texts the adapter need not have seen: the model's
    own scoring (:meth:`LTuningModel.score_texts`) with the candidates' injection (:func:`candidate_injection`,
    which says how ``unseen_label_head`` scores label texts the head was not trained on)."""
    with torch.inference_mode():
        inj = candidate_injection(model, label_texts, unseen_label_head)
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


# ---------------------------------------------------------------------- predict
def _is_single_input(texts, pairs: bool | None) -> bool:
    """One input: a string, or one (premise, hypothesis) tuple, unless the model is known to be trained on
    single texts (text_pairs False): then a tuple of two strings is two texts."""
    return isinstance(texts, str) or (pairs is not False and isinstance(texts, tuple) and len(texts) == 2
                                      and all(isinstance(t, str) for t in texts))


def _split_candidates(candidate_labels):
    """``"bad, good"`` as the zero-shot-classification pipeline takes it: a list of names; other values as
    given."""
    if not isinstance(candidate_labels, str):
        return candidate_labels
    names = [c.strip() for c in candidate_labels.split(",") if c.strip()]
    if not names:
        raise ConfigError("candidate_labels is empty: give label names, e.g. ['bad', 'good'] or 'bad,good'")
    return names


def _check_label_conditioned(model: LTuningModel, candidate_labels, hypothesis_template: str | None,
                             multi_label: bool) -> None:
    """Candidate labels, a template or multi_label need a label-conditioned method."""
    conditioned = candidate_labels is not None or hypothesis_template is not None or multi_label
    if conditioned and not model.label_conditioned:
        what = ("candidate_labels" if candidate_labels is not None else
                "hypothesis_template" if hypothesis_template is not None else "multi_label")
        raise ConfigError(
            f"{what} needs a label-conditioned method (lt-prefix or lt-prompt): {model.config.method} has a "
            f"fixed {model.num_labels}-way softmax head over {model.label_names}"
        )


def _label_sets(model: LTuningModel, n_items: int, candidate_labels, multi_label: bool) -> list[tuple[str, ...]]:
    """The label set of each text: the training labels, one candidate list for all, or one list per text."""
    if candidate_labels is None:
        label_sets = [tuple(model.label_names)] * n_items
    elif len(candidate_labels) and not isinstance(candidate_labels[0], str):
        if len(candidate_labels) != n_items:
            raise ConfigError(f"candidate_labels: {len(candidate_labels)} candidate label lists for {n_items} texts; give one "
                              "list per text, or one list for all")
        label_sets = [tuple(str(c) for c in cs) for cs in candidate_labels]
    else:
        label_sets = [tuple(str(c) for c in candidate_labels)] * n_items
    for ls in set(label_sets):
        if len(ls) < (1 if multi_label else 2):
            raise ConfigError(f"candidate_labels: need at least {1 if multi_label else 2} candidate labels, "
                              f"got {list(ls)}")
    return label_sets


def _logits(model: LTuningModel, items: list, label_sets: list[tuple[str, ...]], batch_size: int,
            candidate_labels, hypothesis_template: str | None, unseen_label_head: str = "trained") -> list[torch.Tensor]:
    """The logits of each text over its label set: texts that share a label set are scored together."""
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
                                      batch_size, unseen_label_head)
        for j, i in enumerate(idx):
            logits[i] = scores[j]
    return logits


def _result(item, ls: tuple[str, ...], z: torch.Tensor, multi_label: bool, threshold: float,
            return_scores: bool):
    """One text's prediction: the top label (softmax), the labels over ``threshold`` (sigmoids, best
    first), or with ``return_scores`` the zero-shot pipeline's dict: every label, sorted by score."""
    probs = (torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)).tolist()
    # best first; equal scores keep the label order (a stable sort)
    order = sorted(range(len(ls)), key=lambda k: -probs[k])
    if return_scores:
        return {"sequence": item, "labels": [ls[k] for k in order], "scores": [probs[k] for k in order]}
    if multi_label:
        return [ls[k] for k in order if probs[k] >= threshold]
    return ls[int(z.argmax())]


def _prepare(model: LTuningModel, texts, batch_size: int, candidate_labels, hypothesis_template: str | None,
             multi_label: bool, threshold: float | None = None, return_scores: bool = False,
             unseen_label_head: str = "trained"):
    """Checked inputs of :func:`predict` / :func:`predict_proba`: (single input?, items, label sets, logits)."""
    pairs = model.config.text_pairs
    single = _is_single_input(texts, pairs)
    items = [texts] if single else text_list(texts)
    check_options(multi_label, threshold, return_scores, hypothesis_template)
    check_unseen_label_head(unseen_label_head)
    check_batch_size(batch_size)
    candidate_labels = _split_candidates(candidate_labels)
    check_candidate_labels(candidate_labels)
    check_texts(items, pairs=pairs)  # batch_size: checked above (None too)
    _check_label_conditioned(model, candidate_labels, hypothesis_template, multi_label)
    if not items:
        return single, items, [], []
    if multi_label and model.config.objective == "listwise":
        _warn_caller("multi_label reads each label's score as a probability (a sigmoid), but this adapter was trained "
                     "with the listwise objective, which only ranks labels against each other: the per-label "
                     "probabilities are not calibrated. For multi-label use, train with --objective pairwise")
    label_sets = _label_sets(model, len(items), candidate_labels, multi_label)
    logits = _logits(model, items, label_sets, batch_size, candidate_labels, hypothesis_template, unseen_label_head)
    return single, items, label_sets, logits


def predict(model: LTuningModel, texts: TextInput | Sequence[TextInput], batch_size: int = 64,
            candidate_labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
            hypothesis_template: str | None = None, multi_label: bool = False, threshold: float | None = None,
            return_scores: bool = False, unseen_label_head: str = "trained"):
    """Classify texts; see :meth:`LTuningModel.predict`."""
    single, items, label_sets, logits = _prepare(model, texts, batch_size, candidate_labels, hypothesis_template,
                                                 multi_label, threshold, return_scores, unseen_label_head)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    results = [_result(item, ls, z, multi_label, threshold, return_scores)
               for item, ls, z in zip(items, label_sets, logits, strict=True)]
    return results[0] if single else results


def predict_proba(model: LTuningModel, texts: TextInput | Sequence[TextInput], batch_size: int = 64,
                  candidate_labels: Sequence[str] | None = None, hypothesis_template: str | None = None,
                  multi_label: bool = False, unseen_label_head: str = "trained") -> np.ndarray:
    """(N, K) probabilities in label order (the model's labels, or ``candidate_labels`` as given); see
    :meth:`LTuningModel.predict_proba`. One string is one text: a (1, K) array."""
    _, _, label_sets, logits = _prepare(model, texts, batch_size, candidate_labels, hypothesis_template, multi_label,
                                        unseen_label_head=unseen_label_head)
    if len(set(label_sets)) > 1:
        raise ConfigError("predict_proba returns one (N, K) array, so all texts need the same label set; give one "
                          "candidate_labels list for all texts (or call predict(..., return_scores=True))")
    if not label_sets:  # no texts: K is still the candidates' number where they are given
        candidates = _split_candidates(candidate_labels)
        k = model.num_labels if candidate_labels is None else len(_label_sets(model, 1, candidates, multi_label)[0])
    else:
        k = len(label_sets[0])
    if not logits:
        return np.zeros((0, k), dtype=np.float32)
    z = torch.stack(logits).float()
    probs = torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)
    return probs.numpy()
