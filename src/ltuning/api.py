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
    >>> sorted(out[0]["labels"]), round(sum(out[0]["scores"]), 4), out[0]["sequence"]
    (['bad', 'fun', 'good'], 1.0, 'i loved it')
    >>> sorted(model.predict(["i loved it"], candidate_labels=["bad", "good", "fun"], multi_label=True,
    ...                      threshold=0.0)[0])  # every sigmoid score is >= 0
    ['bad', 'fun', 'good']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .backbones import Backbone
from .config import LTuningConfig, _is_int, check_arg, is_text
from .errors import ConfigError
from .loading import as_backbone
from .model import LTuningModel
from .prediction import TextInput, _apply_template, candidate_injection, predict, score_candidates

__all__ = [
    "TextInput", "_apply_template", "candidate_injection", "get_ltuning_model", "load_ltuning_model", "predict",
    "score_candidates",
]


# ---------------------------------------------------------------------- building
_as_backbone = as_backbone


def _label_lists(labels) -> tuple[list[str], list[str] | None]:
    """Names and (optional) texts from a list of names, a mapping name -> text, or a datasets ClassLabel."""
    if labels is None:
        return [], None
    if hasattr(labels, "names") and not isinstance(labels, Mapping):  # datasets.ClassLabel
        labels = list(labels.names)
    if isinstance(labels, str):
        raise ConfigError(f"labels must be a list of names, not the string {labels!r}")
    what = "a non-empty list of label names (strings), a mapping name -> label text, or a datasets.ClassLabel"
    if isinstance(labels, Mapping):
        check_arg(bool(labels) and all(_is_name(k) and is_text(v) for k, v in labels.items()), "labels", what, labels)
        return [str(k) for k in labels], [str(v) for v in labels.values()]
    check_arg(isinstance(labels, list | tuple) and bool(labels) and all(_is_name(n) for n in labels), "labels",
              what, labels)
    return [str(n) for n in labels], None


def _is_name(n) -> bool:
    """A label name: a non-empty UTF-8 string, or an integer (a dataset's class index, read as its string)."""
    return is_text(n) or _is_int(n)


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
    check_arg(config is None or isinstance(config, LTuningConfig), "config", "an LTuningConfig or None", config)
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
    return LTuningModel.from_pretrained(directory, model, tokenizer, trust_remote_code)


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
