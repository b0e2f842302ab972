"""LTuningModel: a frozen backbone, one method's trainable parameters, and the cached label encodings."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import prediction
from ._version import __version__
from .adapter_io import (
    check_adapter_weights,
    fit_config_to_backbone,
    read_adapter_config,
    read_adapter_weights,
    write_adapter,
)
from .backbones import Backbone, Texts
from .config import (
    LabelPosition,
    LTuningConfig,
    TextPooling,
    _is_int,
    check_arg,
    config_source,
    is_adapter_folder,
    is_path,
    shown,
)
from .errors import AdapterError, ConfigError
from .labels import LabelSet, default_label_length, label_token_lengths
from .loading import adapter_backbone, as_backbone, check_tokenizer, load_backbone, portable_name
from .methods import Injection, get_method
from .prediction import check_texts
from .progress import progress_bar

__all__ = ["LTuningModel", "check_texts"]


class LTuningModel(nn.Module):
    """Frozen backbone + method + head.

    The K label texts are checked and encoded by the frozen backbone once, here (a
    :class:`~ltuning.labels.LabelSet`), and kept as buffers ``label_states`` (K, l, d) and ``label_mask``
    (K, l); training and prediction only index them.

    Example:
        >>> model = LTuningModel(load_backbone("minilm"), LTuningConfig(method="lt-prefix",
        ...                      label_names=["negative", "positive"]))  # doctest: +SKIP
        >>> model.predict(["What a boring display", "I'm wowed!"])  # doctest: +SKIP
        ['negative', 'positive']
    """

    def __init__(self, backbone: Backbone, config: LTuningConfig) -> None:
        super().__init__()
        method_cls = get_method(config.method)
        # The model's own copy: filling in l, the fingerprint and the resolved pooling must not change the
        # caller's config (which may build another model, on another backbone).
        config = LTuningConfig.from_dict(config.to_dict())
        if config.tasks is not None and not method_cls.label_conditioned:
            raise ConfigError(
                f"{config.method} has a fixed K-way head over one label set, so it cannot train or score several "
                f"tasks' label sets (tasks {list(config.tasks)}); multi-task training needs a label-conditioned "
                "method (lt-prefix or lt-prompt), or train one adapter per task")
        if config.tasks is not None and not config.label_names:  # the model's own labels: the first task's
            first = next(iter(config.tasks.values()))
            config.label_names, config.label_texts = list(first["label_names"]), list(first["label_texts"])
        if config.num_labels < 2:
            raise ConfigError(f"label_names: need at least 2 labels, got {config.label_names}")
        method_cls.check_config(config)
        # The fingerprint names the backbone this model is built on (a config copied from another model, or
        # read from an adapter, may carry another's; the adapter loader compares fingerprints before this).
        if config.backbone_fingerprint is None and config.base_model == LTuningConfig().base_model:
            # a fresh config left at the default name: the backbone it is built on names it (as in
            # get_ltuning_model), or the saved adapter would name the default backbone
            config.base_model = backbone.name
        config.backbone_fingerprint = backbone.fingerprint
        config.backbone_weights = backbone.weights_sample
        config.backbone_settings = dict(backbone.settings) or None
        config.base_model = portable_name(config.base_model)  # a folder by its absolute path, never a relative one
        self.backbone = backbone
        self.config = config
        self.pooling = backbone.resolve_pooling(config.text_pooling)
        config.text_pooling = self.pooling  # saved adapters name the pooling they were trained with, not "auto"
        # The label rules (l within the position table and above the special tokens, distinct labels) hold
        # here as for candidates; only the LT methods read label tokens (for the classic ones l is just
        # their number of virtual tokens, and their K-way head tells labels apart by index).
        if config.tasks is not None and config.label_length is None:
            # one l for every task's labels (LT-prefix's Z reads exactly l tokens): the longest of all tasks
            config.label_length = max(default_label_length(backbone, t["label_texts"], f"task {n!r} label text")
                                      for n, t in config.tasks.items())
        labels = LabelSet.build(backbone, config.label_texts, config.label_length,
                                label_conditioned=method_cls.label_conditioned, names=config.label_names)
        config.label_length = labels.length
        # Not saved with the adapter: recomputed from the frozen backbone and the label texts.
        self.register_buffer("label_states", labels.states, persistent=False)  # (K, l, d)
        self.register_buffer("label_mask", labels.mask, persistent=False)  # (K, l)
        method_cls.check_backbone(config, backbone, labels.mask)
        for name, task in (config.tasks or {}).items():  # each task's labels, as for_task reads them (at most l)
            lengths = label_token_lengths(backbone, task["label_texts"], f"task {name!r} label text")
            method_cls.check_labels(config, task["label_texts"], [min(n, labels.length) for n in lengths],
                                    backbone.name, what=f"task {name!r} label texts",
                                    remedy="use prefix_pooling='raw' (--prefix-pooling raw) or a label map "
                                           "(--label-map-rank 8)")
        self.prompt_after = config.label_position == LabelPosition.AFTER
        if self.prompt_after:
            if backbone.kind != "decoder":
                raise ConfigError(
                    f"label_position='after' needs a decoder, but {backbone.name} is an encoder: its attention is "
                    "bidirectional, so the text's states depend on the label after it and nothing is shared; "
                    "use label_position='before' (the paper's order) with encoders"
                )
            if self.pooling != TextPooling.LAST:
                raise ConfigError(
                    f"label_position='after' reads the last soft-prompt position (text_pooling 'last' or 'auto'), "
                    f"got text_pooling={self.pooling.value!r}"
                )
        self.method = method_cls(config, backbone.dims, config.num_labels, config.label_length).to(backbone.device)
        config.score_head = self.method.score_head  # what the method uses (classic methods: their K-way head)
        config.label_map_rank = self.method.label_map_rank  # lt-prefix: the rank it built (0: none); others None
        vectors = labels.encode_vectors(backbone, self.pooling) if self.method.uses_label_vectors else None
        self.register_buffer("label_vectors", vectors, persistent=False)  # (K, d) or None
        self.method.init_from_backbone(backbone)
        # True once an adapter's weights were loaded by recipe.warm_start or build_and_train(init_from=): the
        # run's checkpoints record it, so a resume must give --init-from again, like its other options (the
        # source also set l and the prefix depth, and is named in the saved adapter's _meta and card).
        self.warm_started = False

    # ------------------------------------------------------------------ properties
    @property
    def label_names(self) -> list[str]:
        return self.config.label_names

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def task_names(self) -> list[str]:
        """The tasks of a multi-task adapter (``config.tasks``), the primary one first; [] for one task."""
        return list(self.config.tasks or {})

    def for_task(self, task: str) -> LTuningModel:
        """This model with ``task``'s label set (a multi-task adapter's ``config.tasks``) as its labels: a view
        that shares the backbone and the trained method (training the view trains this model), with that
        task's label encodings. ``predict``, ``predict_proba``, ``score_texts`` and ``evaluate`` on the view
        use the task's labels. The primary task (the first) is the model itself. Save the model, not a view.

        Raises: ConfigError when the adapter has no task of that name (naming the ones it has)."""
        tasks = self.config.tasks or {}
        if not isinstance(task, str) or task not in tasks:
            have = (f"its tasks are {list(tasks)}" if tasks else
                    "it was trained on one label set (no tasks); use its own labels, or candidate_labels=")
            raise ConfigError(f"task {shown(task)}: this adapter has no task of that name; {have}")
        if task == next(iter(tasks)):
            return self
        views = self.__dict__.setdefault("_task_views", {})
        view = views.get(task)
        # the label encodings are rebuilt when the model moved or changed dtype; everything else the view reads
        # from the model (its config with the task's labels, its train/eval mode) is refreshed on every call
        if view is None or (view.label_states.device, view.label_states.dtype) != \
                (self.label_states.device, self.label_states.dtype):
            # plain tensors even when first asked for under torch.inference_mode: the view is kept, and
            # training reads it later (inference tensors cannot be saved for backward)
            dtype = self.label_states.dtype
            with torch.inference_mode(False), torch.no_grad():
                labels = self._task_labels(tasks[task])
                states = labels.states.to(dtype)
                vectors = (labels.encode_vectors(self.backbone, self.pooling).to(dtype)
                           if self.method.uses_label_vectors else None)
            view = LTuningModel.__new__(LTuningModel)
            view.__dict__.update({k: v for k, v in self.__dict__.items() if k not in
                                  ("_injection_cache", "_task_views", "_buffers", "_modules", "_parameters")})
            view._parameters, view._modules = dict(self._parameters), dict(self._modules)
            view._buffers = {"label_states": states, "label_mask": labels.mask, "label_vectors": vectors}
            view.__dict__["_task_label_length"] = labels.length
            views[task] = view
        config = LTuningConfig.from_dict(self.config.to_dict())
        config.label_names = list(tasks[task]["label_names"])
        config.label_texts = list(tasks[task]["label_texts"])
        config.label_length = view.__dict__["_task_label_length"]
        view.config = config
        view.__dict__["training"] = self.training
        return view

    def _task_labels(self, task: dict) -> LabelSet:
        """A task's label set at this adapter's l where the method reads exactly l tokens (LT-prefix's Z),
        else at the texts' own length (LT-prompt), as candidate labels are built."""
        texts = task["label_texts"]
        longest = max(label_token_lengths(self.backbone, texts, "task label text"))
        length = self.method.candidate_label_length(longest)
        return LabelSet.build(self.backbone, texts, None if length == longest else length, what="task label text",
                              length_name="the adapter's label_length", label_conditioned=True,
                              names=task["label_names"])

    @property
    def base_model(self) -> nn.Module:
        """The frozen backbone's transformers model (``BertModel``, ``LlamaModel``, ...), as peft's
        ``PeftModel.base_model`` names the wrapped model."""
        return self.backbone.model

    @property
    def device(self) -> torch.device:
        """Where the backbone's weights are (transformers pipelines read ``model.device``)."""
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def label_conditioned(self) -> bool:
        return self.method.label_conditioned

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.method.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def print_trainable_parameters(self) -> None:
        trainable = self.num_trainable_parameters()
        total = trainable + sum(p.numel() for p in self.backbone.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------------ forward
    def injection(self) -> Injection:
        """The method's prefix or prompt for every label (LT) or the one shared group (classic).

        In eval mode with gradients off (prediction), the result is cached and reused until the method's
        parameters or the label encodings change (an in-place update, ``load_state_dict``, a new tensor or
        a move to another device or dtype), or :meth:`train` is called. An edit through ``.data`` is not
        seen: call :meth:`clear_injection_cache` after one.
        """
        if self.training or torch.is_grad_enabled():
            return self._method_injection()
        key = self._injection_key()
        if key is None:
            return self._method_injection()
        cached = self.__dict__.get("_injection_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._method_injection())
            self.__dict__["_injection_cache"] = cached
        return cached[1]

    def _method_injection(self) -> Injection:
        inj = self.method(self.label_states, self.label_mask)
        inj.label_vectors = self.label_vectors
        return inj

    def _injection_key(self) -> tuple | None:
        """What the cached injection depends on; None where it cannot be told (a tensor made under
        ``torch.inference_mode`` has no version counter), and then nothing is cached."""
        tensors = [*self.method.parameters(), *self.method.buffers(), self.label_states, self.label_mask,
                   *([] if self.label_vectors is None else [self.label_vectors])]
        if any(t.is_inference() for t in tensors):
            return None
        # Under autocast the injection comes out in the autocast dtype: the key holds the autocast state,
        # so a bf16 prefix computed for one autocast call is never reused by a float32 call.
        device = self.label_states.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        # A fused optimizer step (AdamW(fused=True), the Trainer's adamw_torch_fused) leaves _version as it was:
        # each parameter's sum joins the key (one small reduction per call)
        params = list(self.method.parameters())
        sums = tuple(torch.stack([p.detach().float().sum() for p in params]).tolist()) if params else ()
        return (id(self.method), autocast, sums) + tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def clear_injection_cache(self) -> None:
        """Forget the cached prediction-time prefixes / prompts (they are recomputed on the next call)."""
        self.__dict__.pop("_injection_cache", None)

    def train(self, mode: bool = True) -> LTuningModel:
        if mode:
            self.clear_injection_cache()
        return super().train(mode)

    def _pooled(self, batch: dict[str, torch.Tensor], inj: Injection) -> torch.Tensor:
        return self.backbone(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
            prefix=inj.prefix, prompt=inj.prompt, prompt_mask=inj.prompt_mask, pooling=self.pooling,
            prompt_after=self.prompt_after,
        ).to(self.head_dtype)  # (B, d)

    @property
    def head_dtype(self) -> torch.dtype:
        """The dtype the trainable part computes in: its parameters' (float32 unless the whole model was cast,
        e.g. ``model.to(torch.bfloat16)``). The backbone's pooled output is cast to it, so a bf16 backbone under
        fp32 maps (autocast, or a backbone loaded in bf16) and an all-bf16 model both work."""
        return next((p.dtype for p in self.method.parameters() if p.is_floating_point()), torch.float32)

    def forward(self, batch: dict[str, torch.Tensor], label_ids: torch.Tensor | None = None,
                injection: Injection | None = None) -> torch.Tensor:
        """Logits.

        Label-conditioned methods: ``label_ids`` (B,) pairs each text with a label; returns (B,) pair
        logits (log-odds that the label is the text's). Classic methods: returns (B, K) class logits.
        """
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise TypeError(f"model(...) takes texts (a string, or a list or tuple of texts) or a batch of tensors (a "
                            f"dict with input_ids and attention_mask); got {shown(batch)}")
        inj = injection if injection is not None else self.injection()
        B = batch["input_ids"].shape[0]
        if self.label_conditioned:
            if label_ids is None:
                raise ConfigError(f"{self.config.method} scores (text, label) pairs: pass label_ids")
            rows = inj.select(label_ids)
            return self.method.pair_logit(self._pooled(batch, rows), rows.label_vectors, rows.frozen_head)  # (B,)
        idx = torch.zeros(B, dtype=torch.long, device=batch["input_ids"].device)
        return self.method.head(self._pooled(batch, inj.select(idx)))  # (B, K)

    def class_scores(self, batch: dict[str, torch.Tensor], injection: Injection | None = None) -> torch.Tensor:
        """(B, K) score of every label for every text (A.4); LT methods run B*K rows in one forward.

        With ``label_position="after"`` and gradients off, the texts run once and their keys/values are
        shared by the K labels (:meth:`Backbone.last_of_prompt_after_shared_text`); same scores. With a prefix
        in the top j < m layers (``prefix_layers``), the texts' bottom m - j layers run once for the K labels
        (:meth:`Backbone.pooled_per_prefix`), with or without gradients; same scores as the B*K rows.
        """
        if not self.label_conditioned:
            return self(batch, injection=injection)
        inj = injection if injection is not None else self.injection()
        B = batch["input_ids"].shape[0]
        K = inj.groups  # labels of this injection
        vectors = None if inj.label_vectors is None else inj.label_vectors.unsqueeze(0)  # (1, K, d)
        if self.shares_text():
            pooled = self.backbone.last_of_prompt_after_shared_text(
                batch["input_ids"], batch["attention_mask"], inj.prompt, inj.prompt_mask)  # (B, K, d)
            return self.method.pair_logit(pooled.to(self.head_dtype), vectors, inj.frozen_head)  # (B, K)
        if self.backbone.shares_bottom(inj.prefix):  # prefix_layers j < m: the bottom m - j layers run once
            pooled = self.backbone.pooled_per_prefix(batch["input_ids"], batch["attention_mask"],
                                                     batch.get("token_type_ids"), inj.prefix, pooling=self.pooling)
            return self.method.pair_logit(pooled.to(self.head_dtype), vectors, inj.frozen_head)  # (B, K)
        rows = {k: v.repeat_interleave(K, dim=0) for k, v in batch.items()}  # (B*K, n)
        label_ids = torch.arange(K, device=batch["input_ids"].device).repeat(B)  # (B*K,)
        return self(rows, label_ids, injection=inj).view(B, K)

    def shares_text(self) -> bool:
        """Whether prediction runs each text once for all labels (label_position="after", no gradients)."""
        return self.prompt_after and self.label_conditioned and not torch.is_grad_enabled()

    def loss(self, batch: dict[str, torch.Tensor], labels: torch.Tensor, label_ids: torch.Tensor | None = None,
             targets: torch.Tensor | None = None, objective: str = "pairwise") -> torch.Tensor:
        """Training loss. LT methods: ``pairwise`` (A.3), BCE on one (text, label, target) pair per text
        (``label_ids``, ``targets``; the default of this low-level call, which takes the pair inputs);
        ``listwise`` (:class:`~ltuning.train.TrainArgs`' default), K-way cross-entropy over the pair logits of
        all K labels of each text (K rows per text). Classic methods: K-way cross-entropy on their head."""
        if self.label_conditioned and objective == "listwise":
            return F.cross_entropy(self.class_scores(batch), labels)
        if self.label_conditioned:
            logits = self(batch, label_ids)
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return F.cross_entropy(self(batch), labels)

    # ------------------------------------------------------------------ prediction
    def tokenize(self, texts: Texts, injected: int | None = None) -> dict[str, torch.Tensor]:
        """Tokens of ``texts``, cut to what fits beside ``injected`` prefix / prompt positions (default: the
        adapter's l; candidate labels may be longer, see :meth:`max_text_length`)."""
        enc = self.backbone.tokenize(texts, self.max_text_length(injected))
        return {k: v.to(self.backbone.device) for k, v in enc.items()}

    @property
    def text_max_length(self) -> int:
        """Tokens a text is truncated to: ``config.max_length``, or less where the backbone's learned position
        table cannot hold that many beside the l prefix / prompt positions."""
        return self.max_text_length()

    def max_text_length(self, injected: int | None = None) -> int:
        """:attr:`text_max_length` beside ``injected`` prefix / prompt positions instead of l."""
        fits = self.backbone.max_text_tokens(self.config.label_length if injected is None else injected)
        return self.config.max_length if fits is None else min(self.config.max_length, fits)

    #: Token budget of one prediction forward on CPU (rows x padded length). On CPU, per-row time grows
    #: with the batch once activations outgrow the caches (MiniLM, K=16: 1024 rows of ~40 tokens ran 1.5-2x
    #: slower per row than 64 rows; benchmarks/speed.py). On a GPU all rows of a batch go in one forward.
    cpu_max_tokens: int = 2048

    @torch.inference_mode()
    def score_texts(self, texts: Texts, batch_size: int = 64, progress: bool = False,
                    max_tokens: int | None = None, injection: Injection | None = None) -> torch.Tensor:
        """(N, K) label scores for N texts (A.4).

        The K label prefixes / prompts are computed once (cached while the adapter is unchanged, see
        :meth:`injection`; or pass ``injection``, e.g. for other label texts). Texts are sorted by length,
        tokenized ``batch_size`` at a time and padded per forward; a forward runs the K (text, label) rows
        of as many texts as fit ``max_tokens`` rows x padded tokens (default: :attr:`cpu_max_tokens` on
        CPU, no limit on a GPU). The scores do not depend on the batching.
        """
        texts = prediction.text_list(texts)
        prediction.check_batch_size(batch_size)
        check_texts(texts, pairs=self.config.text_pairs)  # batch_size: checked above (None too)
        check_arg(max_tokens is None or (_is_int(max_tokens) and max_tokens >= 1), "max_tokens",
                  "a positive integer or None", max_tokens)
        was_training = self.training
        self.eval()
        try:
            inj = injection if injection is not None else self.injection()  # once for all batches
            groups = inj.groups
            K = groups if self.label_conditioned else self.num_labels
            rows_per_text = groups if self.label_conditioned else 1
            if self.shares_text():  # a text of n tokens costs n + K*l positions, not K*(n + l)
                def cost(count, n, l=inj.prompt.shape[1]):
                    return count * (n + groups * l)
            elif self.label_conditioned and self.backbone.shares_bottom(inj.prefix):
                # m - j shared layers + K*j label layers per text, in row-equivalents of m layers
                def cost(count, n, j=inj.prefix.shape[1], m=self.backbone.dims.num_layers):
                    return count * n * ((m - j) + groups * j) / m
            else:
                def cost(count, n):
                    return rows_per_text * count * n
            if max_tokens is None and self.backbone.device.type == "cpu":
                max_tokens = self.cpu_max_tokens
            order = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))
            out = torch.empty(len(texts), K)
            bar = progress_bar(-(-len(texts) // batch_size), desc="scoring", unit="batch", disable=not progress)
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                enc = self.tokenize([texts[i] for i in idx], injected=inj.length)
                real = enc["attention_mask"].bool()
                lengths = real.sum(-1).tolist()
                by_len = sorted(range(len(idx)), key=lengths.__getitem__)
                i = 0
                while i < len(by_len):
                    j = i + 1 if max_tokens is not None else len(by_len)
                    # greedy: texts i..j-1 (ascending length) while rows x longest text fits the budget
                    while j < len(by_len) and cost(j + 1 - i, lengths[by_len[j]]) <= max_tokens:
                        j += 1
                    rows = torch.tensor(by_len[i:j], device=real.device)
                    n = int(real.index_select(0, rows).any(0).nonzero().max()) + 1  # drop all-padding columns
                    chunk = {k: v.index_select(0, rows)[:, :n] if v.dim() == 2 else v.index_select(0, rows)
                             for k, v in enc.items()}
                    scores = self.class_scores(chunk, injection=inj)
                    out[[idx[r] for r in by_len[i:j]]] = scores.float().cpu()
                    i = j
                bar.update(1)
            bar.close()
        finally:
            if was_training:
                self.train()
        return out

    def predict(self, texts: str | Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 64,
                candidate_labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
                hypothesis_template: str | None = None, multi_label: bool = False, threshold: float | None = None,
                return_scores: bool = False, unseen_label_head: str = "trained"):
        """Label name of each text (argmax over all labels, A.4).

        Args:
            texts: strings or (premise, hypothesis) pairs; a single string gives a single result.
            candidate_labels: score these label names instead of the training labels (LT methods only: the
                frozen backbone encodes them and the trained method turns them into prefixes / prompts);
                one list for all texts, or one list per text, or one comma-separated string (as the
                zero-shot pipeline takes it).
            hypothesis_template: label text for each label name, e.g. ``"{} film"``.
            multi_label: an independent sigmoid per label; returns the labels scoring >= ``threshold``, best
                first.
            threshold: with ``multi_label`` only (refused without it), in [0, 1]; None: 0.5.
            return_scores: return what transformers' zero-shot-classification pipeline returns, one dict
                per text: ``{"sequence": text, "labels": [...], "scores": [...]}`` with every label, sorted
                by score (best first); the scores are a softmax over the labels, or with ``multi_label``
                per-label sigmoids (all labels are listed: ``threshold`` only selects without scores).
                (A breaking change: it was ``{"label": name, "scores": {name: p}}`` in label order.)
            unseen_label_head: how candidate label texts the score head was not trained on are scored
                (similarity and anchored heads): ``"trained"`` (default) the trained head, ``"cosine"`` the
                frozen similarity of the label-prefixed text and the label's embedding: better for another
                task's labels, worse for other wordings of the trained labels
                (:func:`ltuning.prediction.candidate_injection`).
        Returns: ``["negative", "positive", ...]`` (lists of names with ``multi_label``), or dicts.
        Raises:
            ConfigError: candidate labels, a template or multi_label on a classic prefix / prompt model.

        Example:
            >>> model.predict(["What a boring display", "I'm wowed!"])  # doctest: +SKIP
            ['negative', 'positive']
            >>> model.predict("I'm wowed!", candidate_labels=["bad", "good"], return_scores=True)  # doctest: +SKIP
            {'sequence': "I'm wowed!", 'labels': ['good', 'bad'], 'scores': [0.92, 0.08]}
        """
        return prediction.predict(self, texts, batch_size, candidate_labels=candidate_labels,
                                  hypothesis_template=hypothesis_template, multi_label=multi_label,
                                  threshold=threshold, return_scores=return_scores,
                                  unseen_label_head=unseen_label_head)

    def predict_proba(self, texts: str | Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 64,
                      candidate_labels: Sequence[str] | None = None, hypothesis_template: str | None = None,
                      multi_label: bool = False, unseen_label_head: str = "trained") -> np.ndarray:
        """(N, K) float32 numpy array of label probabilities, columns in label order (``label_names``, or
        ``candidate_labels`` as given), as scikit-learn's ``predict_proba``; one string gives (1, K).

        Single-label (default): a softmax over the K labels, each row sums to 1 (its argmax is
        :meth:`predict`). ``multi_label=True`` (LT methods): each column is the independent sigmoid of that
        (text, label) pair's logit, the probability that the label applies; rows need not sum to 1.
        """
        return prediction.predict_proba(self, texts, batch_size, candidate_labels=candidate_labels,
                                        hypothesis_template=hypothesis_template, multi_label=multi_label,
                                        unseen_label_head=unseen_label_head)

    def __call__(self, *args, **kwargs):
        """``model(texts, candidate_labels=None, hypothesis_template=None, multi_label=False)``: the zero-shot
        pipeline's call, i.e. :meth:`predict` with ``return_scores=True`` (a dict for one string, a list of
        dicts for a list). A dict of tensors (what training and :meth:`class_scores` pass) goes to
        :meth:`forward` as for any module; anything else (a string, or any iterable of texts, as
        :meth:`predict` takes: a list, a ``datasets`` column, a pandas Series) takes the prediction path, also
        given by keyword (``texts=``, or ``sequences=`` as the zero-shot pipeline names it)."""
        if args and not isinstance(args[0], Mapping | torch.Tensor):
            return self._classify(*args, **kwargs)
        if not args and ("texts" in kwargs or "sequences" in kwargs):
            if "texts" in kwargs and "sequences" in kwargs:
                raise TypeError("give the texts once: model(texts) or model(texts=...), not also sequences=")
            texts = kwargs.pop("texts") if "texts" in kwargs else kwargs.pop("sequences")
            return self._classify(texts, **kwargs)
        return super().__call__(*args, **kwargs)

    def _classify(self, texts, candidate_labels=None, *, hypothesis_template: str | None = None,
                  multi_label: bool = False, batch_size: int = 64):
        """:meth:`__call__` on texts, with the pipeline's argument order (candidate labels second)."""
        return self.predict(texts, batch_size, candidate_labels=candidate_labels,
                            hypothesis_template=hypothesis_template, multi_label=multi_label, return_scores=True)

    # ------------------------------------------------------------------ saving (peft-style)
    def save_pretrained(self, directory: str | Path, overwrite: bool = False, **extra) -> Path:
        """Write the adapter (config, trainable weights, README.md model card) into ``directory`` (``extra``:
        more ``_meta`` keys). Files there that ltuning did not write (a user's README.md) are replaced only with
        ``overwrite``; a failed write (a full disk) leaves the folder as it was.

        Raises:
            AdapterError: ``directory`` holds files at the adapter's names that ltuning did not write.
            WriteError: the disk is full (or another write error); nothing was changed.
        """
        check_arg(is_path(directory), "directory", "a folder path (str or pathlib.Path)", directory)
        check_arg(isinstance(overwrite, bool), "overwrite", "True or False", overwrite)
        meta = {
            "ltuning_version": __version__,
            "trainable_parameters": self.num_trainable_parameters(),
            "backbone_dims": dataclasses.asdict(self.backbone.dims),
            **extra,
        }
        total = meta["trainable_parameters"] + sum(p.numel() for p in self.backbone.parameters())
        return write_adapter(directory, self.config.to_dict(), self.method.state_dict(), meta, total, overwrite)

    @classmethod
    def from_pretrained(cls, directory, model=None, tokenizer=None,
                        trust_remote_code: bool = False) -> LTuningModel:
        """Load an adapter folder onto the backbone it names, or onto ``model`` (a name, folder, transformers
        model + ``tokenizer``, or Backbone).

        Both argument orders work: ``from_pretrained(adapter_dir)``, ``from_pretrained(adapter_dir, model)``,
        and peft's ``from_pretrained(model, adapter_dir)`` (as ``PeftModel.from_pretrained(model, model_id)``):
        a model object first is always the backbone; of two names or paths, the one that is an adapter folder
        (:func:`~ltuning.config.is_adapter_folder`) is the adapter. ``adapter_dir`` may also be a
        ``transformers.Trainer`` ``checkpoint-N/`` folder written while training
        :class:`ltuning.hf.LTuningForTrainer`.

        Raises:
            AdapterError: missing or corrupt files, a backbone whose config fingerprint or weights differ from
                the ones the adapter was trained on, a ``base_model`` that is a relative path here (pass
                ``model``), or adapter weights whose names or shapes do not match.
            ConfigError: a model object but no adapter folder.
        """
        check_tokenizer(tokenizer)
        if not is_path(directory):  # peft's order, a model object first
            if not is_path(model):
                raise ConfigError(f"give the adapter folder (directory): LTuningModel.from_pretrained(adapter_dir) or "
                                  f"LTuningModel.from_pretrained(base_model, adapter_dir); got {shown(directory)} and "
                                  f"{shown(model)}")
            directory, model = model, directory
        elif isinstance(model, str | Path) and not is_adapter_folder(directory) and is_adapter_folder(model):
            directory, model = model, directory  # peft's order with a name: ("minilm", "runs/x")
        backbone = None
        if model is not None and not isinstance(model, str | Path):
            backbone = as_backbone(model, tokenizer, trust_remote_code)
        elif tokenizer is not None:  # it would go unused: a name, or the adapter's base_model, brings its own
            raise ConfigError("tokenizer= is only for a model object; a name or folder brings its own tokenizer")
        directory = Path(directory)
        config = read_adapter_config(directory)
        state = read_adapter_weights(directory)
        if backbone is None:
            if model is not None:  # named by the caller: a relative folder is theirs to mean
                name = str(model)
            else:
                try:
                    name = adapter_backbone(config.base_model, directory)
                except ConfigError as e:
                    raise AdapterError(str(e)) from None
            backbone = load_backbone(name, trust_remote_code=trust_remote_code)
        fit_config_to_backbone(directory, config, backbone)
        try:
            lt_model = cls(backbone, config)
        except ConfigError as e:
            raise AdapterError(f"{config_source(directory)}: {e}") from None
        check_adapter_weights(directory, config.method, lt_model.method.state_dict(), state)
        lt_model.method.load_state_dict(state)
        lt_model.eval()
        return lt_model
