"""An adapter as a transformers pipeline: ``pipeline("ltuning-classification", model=<adapter folder>)``.

Importing this module registers, through transformers' public extension points,

- the task ``"ltuning-classification"`` in ``transformers.pipelines.PIPELINE_REGISTRY``
  (:class:`LTuningClassificationPipeline`, whose "model class" :class:`AdapterLoader` loads an adapter folder
  with :meth:`LTuningModel.from_pretrained`), and
- the config type ``"ltuning"`` with ``AutoConfig``: ``transformers.pipeline`` reads a model folder's
  ``config.json`` (``AutoConfig.from_pretrained``) before it looks at the task, so ``save_pretrained`` writes
  a small ``config.json`` (``{"model_type": "ltuning", ...}``) beside the adapter files. An adapter saved before
  that file existed has no ``config.json``: transformers 5.24 stops on it ("Unrecognized model in <folder>.
  Should have a `model_type` key in its config.json"); :func:`pipeline` (or ``pipeline(TASK,
  model=LTuningModel.from_pretrained(dir))``) loads any adapter folder.

The pipeline returns what the zero-shot-classification pipeline returns (``sequence``, ``labels`` and
``scores`` sorted best first; a dict for one text, a list for several) and takes its arguments
(``candidate_labels``, positional too, ``hypothesis_template``, ``multi_label``). A list of texts is scored
in batches by :meth:`LTuningModel.predict`, not one text per forward.

With peft installed, ``transformers.pipeline`` reads any folder's ``adapter_config.json`` as a peft adapter's
and looks up ``base_model_name_or_path`` in it, which an ltuning adapter does not have (KeyError): use
:func:`pipeline` there.

The module is not imported by ``import ltuning`` (importing ``transformers.pipelines`` takes seconds):
``import ltuning.pipelines`` first, or call :func:`ltuning.pipeline`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from .config import check_arg, is_path
from .errors import ConfigError
from .model import LTuningModel
from .prediction import check_batch_size

__all__ = ["TASK", "AdapterLoader", "LTuningClassificationPipeline", "LTuningPipelineConfig", "pipeline", "register"]

#: The task name this module registers with ``transformers.pipelines.PIPELINE_REGISTRY``.
TASK = "ltuning-classification"


class LTuningPipelineConfig(PretrainedConfig):
    """What ``AutoConfig`` reads from an adapter folder's ``config.json``: only a marker (``model_type``) and
    the adapter's method, base model and labels for a reader; the adapter itself is in ``adapter_config.json``."""

    model_type = "ltuning"


class AdapterLoader:
    """The "model class" of the registered task: ``transformers.pipeline`` calls its ``from_pretrained(folder,
    **kwargs)`` as it would a transformers model class's, and gets an :class:`LTuningModel`."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, *args, dtype: Any = None, trust_remote_code: bool | None = None,
                        **kwargs) -> LTuningModel:
        # kwargs: the pipeline's hub options (revision, token, _from_pipeline, config, ...): an adapter folder is
        # local and its config is adapter_config.json, so none of them applies
        if dtype not in (None, "auto", torch.float32):
            raise ConfigError(f"an ltuning pipeline runs in float32 (got dtype={dtype!r}); for bfloat16 use "
                              "torch.autocast around the call")
        return LTuningModel.from_pretrained(directory, trust_remote_code=bool(trust_remote_code))


class LTuningClassificationPipeline(Pipeline):
    """Zero-shot-classification-shaped pipeline over an :class:`LTuningModel`.

    ``classifier(texts, candidate_labels=None, hypothesis_template=None, multi_label=False)``: without
    ``candidate_labels`` the adapter's own labels are scored; with them (LT methods), any label names.
    """

    _load_tokenizer = False  # the model carries its backbone's tokenizer
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, multi_label=None, **kwargs):
        if kwargs:
            raise ConfigError(f"unknown {TASK} pipeline arguments {sorted(kwargs)}; it takes candidate_labels, "
                              "hypothesis_template, multi_label and batch_size")
        params = {k: v for k, v in (("candidate_labels", candidate_labels), ("hypothesis_template", hypothesis_template),
                                    ("multi_label", multi_label)) if v is not None}
        return {}, params, {}

    def __call__(self, inputs, *args, batch_size: int | None = None, num_workers: int | None = None, **kwargs):
        """One text (a dict back) or a list of texts (a list back), scored in batches of ``batch_size`` (the
        pipeline's, else 64) by the model; other iterables (a generator, a ``datasets`` column, ``KeyDataset``)
        give an iterator of results, read and scored ``batch_size`` texts at a time, as transformers' pipelines
        answer them. ``num_workers`` (a DataLoader option of transformers' pipelines) is accepted and unused:
        the texts are read in this process."""
        if args:  # classifier(texts, ["bad", "good"]), as the zero-shot pipeline takes it
            if len(args) > 1 or "candidate_labels" in kwargs:
                raise ConfigError("give candidate_labels once: classifier(texts, candidate_labels)")
            kwargs["candidate_labels"] = args[0]
        if batch_size is not None:
            check_batch_size(batch_size)
        _, params, _ = self._sanitize_parameters(**kwargs)
        params = {**self._forward_params, **params}
        plain = isinstance(inputs, str | list | tuple | bytes | bytearray | Mapping)
        indexed = hasattr(inputs, "__getitem__") and hasattr(inputs, "__len__")  # a torch Dataset (KeyDataset)
        if not plain and (isinstance(inputs, Iterable) or indexed):
            items = iter(inputs) if isinstance(inputs, Iterable) else (inputs[i] for i in range(len(inputs)))
            return self._iterate(items, batch_size or self._batch_size or 64, params)
        return self._predict(inputs, batch_size=batch_size, **params)  # (the model refuses what is no text)

    def _iterate(self, inputs, size: int, params: dict):
        while chunk := list(itertools.islice(inputs, size)):
            yield from self._predict(chunk, batch_size=size, **params)

    def _predict(self, texts, batch_size: int | None = None, **params):
        return self.model.predict(texts, batch_size or self._batch_size or 64, return_scores=True, **params)

    def preprocess(self, inputs, **_):
        return {"sequence": inputs}

    def _forward(self, model_inputs, **params):
        return self._predict(model_inputs["sequence"], **params)

    def postprocess(self, model_outputs, **_):
        return model_outputs

    def __repr__(self) -> str:
        config = self.model.config
        return (f"{type(self).__name__}(method={config.method!r}, base_model={config.base_model!r}, "
                f"labels={config.label_names}, device={self.device})")


def register() -> None:
    """Register the ``"ltuning"`` config type and the :data:`TASK` pipeline with transformers (done once, on
    import; calling it again changes nothing)."""
    AutoConfig.register(LTuningPipelineConfig.model_type, LTuningPipelineConfig, exist_ok=True)
    if TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=LTuningClassificationPipeline, pt_model=AdapterLoader)


def pipeline(adapter: str | Path | LTuningModel, model=None, device: int | str | torch.device | None = None,
             batch_size: int | None = None, trust_remote_code: bool = False) -> LTuningClassificationPipeline:
    """The :data:`TASK` pipeline over an adapter folder (any: also one saved without ``config.json``, or a
    Trainer checkpoint) or a loaded :class:`LTuningModel`; ``model``: load the adapter onto this backbone
    (as in :meth:`LTuningModel.from_pretrained`). ``device``: as transformers' (default: the model's own;
    ``"cuda"``, ``0``, ...)."""
    check_arg(isinstance(adapter, LTuningModel) or is_path(adapter), "adapter", "an adapter folder or an LTuningModel",
              adapter)
    if batch_size is not None:
        check_batch_size(batch_size)
    other_model = model is not None and model is not getattr(adapter, "base_model", None) \
        and model is not getattr(adapter, "backbone", None)
    if isinstance(adapter, LTuningModel) and (other_model or trust_remote_code):
        given = ", ".join(n for n, v in (("model", other_model), ("trust_remote_code", trust_remote_code)) if v)
        raise ConfigError(f"{given}: the adapter is a loaded LTuningModel, whose backbone is already chosen; give "
                          "an adapter folder to load it onto another backbone")
    lt_model = adapter if isinstance(adapter, LTuningModel) else LTuningModel.from_pretrained(
        adapter, model, trust_remote_code=trust_remote_code)
    return LTuningClassificationPipeline(model=lt_model, task=TASK, device=lt_model.device if device is None else device,
                                         batch_size=batch_size)


register()
