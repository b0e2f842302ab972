"""The frozen backbone: the only module that knows architectures.

It reads the dimensions a method needs (m, d, n_kv, d_h), tokenizes texts and label texts, encodes the
labels once, injects a prefix (per-layer keys and values through a fresh ``DynamicCache``) or a soft
prompt (embeddings placed after the leading special token), and pools the output into one vector per row.

Architecture quirks live in :data:`FAMILIES`, keyed by ``config.model_type``. A model whose family is
not listed gets :class:`~ltuning.errors.UnsupportedModelError`, never a silent wrong result. Loading a
backbone by name (packaged short names, folders, hub ids) is :mod:`ltuning.loading`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .config import TextPooling
from .errors import ConfigError, UnsupportedModelError

Texts = list[str] | list[tuple[str, str]]


@dataclass(frozen=True)
class Dims:
    """Shapes of the frozen model that the methods' parameter shapes depend on."""

    num_layers: int  # m
    hidden_size: int  # d
    num_heads: int
    num_kv_heads: int  # n_kv (== num_heads for plain multi-head attention)
    head_dim: int  # d_h

    @property
    def kv_dim(self) -> int:  # d_kv = n_kv * d_h
        return self.num_kv_heads * self.head_dim


def _falcon_kv_heads(config) -> int:
    """Falcon's real key/value heads: new architecture -> num_kv_heads; 7B-style multi-query -> 1."""
    if getattr(config, "new_decoder_architecture", False):
        return int(config.num_kv_heads)
    return 1 if getattr(config, "multi_query", False) else int(config.num_attention_heads)


def _falcon_cache_heads(config) -> int:
    """Heads in Falcon's cache: the new architecture broadcasts its kv heads to all query heads first."""
    if getattr(config, "new_decoder_architecture", False):
        return int(config.num_attention_heads)
    return _falcon_kv_heads(config)


@dataclass(frozen=True)
class Layout:
    """Where a family keeps what :meth:`Backbone.hidden_states` needs to run a prefix in the top j layers only
    (``prefix_layers`` < m): the bottom m - j layers run without a prefix, then the top j layers run with it,
    starting from the bottom's hidden states.

    layers: dotted path of the layer list the model's forward loops over.
    embeddings: dotted paths of the module whose output is the first layer's input, first present one wins
        (ELECTRA-small projects its embeddings: ``embeddings_project``); the top run replaces its output by the
        bottom's hidden states (the embedding itself, a lookup, is recomputed and dropped).
    final_norm: a norm the model applies after the last layer (decoders), skipped in the bottom run.
    after_first_layer: a module the encoder applies after its first layer only (DeBERTa-v2's conv), switched
        off in the top run, whose first layer is not the model's first.
    """

    layers: str
    embeddings: tuple[str, ...]
    final_norm: str | None = None
    after_first_layer: str | None = None


_ENCODER_LAYOUT = Layout("encoder.layer", ("embeddings_project", "embeddings"))
_DECODER_LAYOUT = Layout("layers", ("embed_tokens",), final_norm="norm")


@dataclass(frozen=True)
class Family:
    """What differs between architecture families, in one place.

    kind: encoders pool the first token (or the pooler); decoders pool the last real token.
    position_start: position id of the first text token of an encoder: ``"zero"``, ``"after_padding_idx"``
        (RoBERTa: config.pad_token_id + 1) or an int (MPNet: 2, its padding_idx is fixed at 1).
    prefix_via: ``"cache"``: prefix keys/values enter through a fresh ``DynamicCache``; ``"attention"``:
        the model takes no cache, so :mod:`ltuning.prefix_attention` patches its self-attention modules.
    kv_heads: config -> n_kv, where the config does not say it plainly (Falcon).
    cache_heads: config -> heads per layer in the model's cache, when it differs from n_kv (Falcon's new
        architecture caches keys already broadcast to every query head); prefix heads are repeated to fit.
    layout: how to run the bottom and the top layers apart (:class:`Layout`); None: a prefix must enter every
        layer (``prefix_layers`` < m is refused for the family).
    """

    kind: Literal["encoder", "decoder"]
    position_start: str | int = "zero"
    prefix_via: Literal["cache", "attention"] = "cache"
    kv_heads: Callable[[object], int] | None = None
    cache_heads: Callable[[object], int] | None = None
    layout: Layout | None = None


FAMILIES: dict[str, Family] = {
    # encoders with absolute positions and a cache argument
    "bert": Family("encoder", layout=_ENCODER_LAYOUT),
    "roberta": Family("encoder", "after_padding_idx", layout=_ENCODER_LAYOUT),
    "electra": Family("encoder", layout=_ENCODER_LAYOUT),
    # encoders with relative positions and no cache: prefix inside attention
    "deberta-v2": Family("encoder", prefix_via="attention",
                         layout=Layout("encoder.layer", ("embeddings",), after_first_layer="encoder.conv")),
    "mpnet": Family("encoder", 2, prefix_via="attention", layout=_ENCODER_LAYOUT),
    # decoders: RoPE (+ GQA), ALiBi, learned positions
    "llama": Family("decoder", layout=_DECODER_LAYOUT),
    "mistral": Family("decoder", layout=_DECODER_LAYOUT),
    "qwen2": Family("decoder", layout=_DECODER_LAYOUT),
    "qwen3": Family("decoder", layout=_DECODER_LAYOUT),
    "falcon": Family("decoder", kv_heads=_falcon_kv_heads, cache_heads=_falcon_cache_heads),
    "bloom": Family("decoder"),
    "gpt2": Family("decoder"),
    "opt": Family("decoder"),
    "gemma2": Family("decoder"),
    "gemma3_text": Family("decoder"),
}

# What ltuning needs to know about a family before it can support it (named in the error for others).
_WHAT_A_FAMILY_NEEDS = (
    "where its prefix keys/values go (a cache argument, or its self-attention modules), how many key/value "
    "heads and which head size its attention uses per layer, and where its position ids start"
)

_FINGERPRINT_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "type_vocab_size",
)


def _first_attr(config, *names: str, required: bool = True):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    if required:
        raise UnsupportedModelError(
            f"{config.model_type} config has none of {names}; please set one of them in the model's config"
        )
    return None


def read_dims(config) -> Dims:
    """Read (m, d, heads, n_kv, d_h) from a transformers config, whatever the family calls them.

    Raises:
        UnsupportedModelError: a dimension is missing, or the layers do not all share one head size
        (e.g. Gemma 4's larger global-attention heads): a prefix of shape (m, 2, n_kv, l, d_h) cannot fit.
    """
    family = FAMILIES.get(getattr(config, "model_type", None))
    m = int(_first_attr(config, "num_hidden_layers", "n_layer", "num_layers"))
    d = int(_first_attr(config, "hidden_size", "n_embd", "d_model"))
    h = int(_first_attr(config, "num_attention_heads", "n_head"))
    if family is not None and family.kv_heads is not None:
        n_kv = family.kv_heads(config)
    else:
        n_kv = int(_first_attr(config, "num_key_value_heads", "num_kv_heads", required=False) or h)
    d_h = int(_first_attr(config, "head_dim", "attention_head_size", required=False) or d // h)
    for key in ("global_head_dim", "head_dim_per_layer"):
        other = getattr(config, key, None)
        if other is not None and other != d_h:
            raise UnsupportedModelError(
                f"{config.model_type} uses head size {d_h} on some layers and {other} ({key}) on others; "
                "ltuning's prefix has one head size for every layer, so this model is not supported"
            )
    return Dims(num_layers=m, hidden_size=d, num_heads=h, num_kv_heads=n_kv, head_dim=d_h)


def config_fingerprint(config) -> str:
    """Short hash of the architecture-defining config keys; an adapter only loads onto a matching one."""
    d = config.to_dict()
    keys = {k: d.get(k) for k in _FINGERPRINT_KEYS if d.get(k) is not None}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


#: Config values that change what a backbone computes without changing any weight's shape (the fingerprint's
#: keys fix the shapes, the weights sample the values): activation, norm epsilons, position encodings,
#: attention and embedding scales. Recorded by value (:func:`config_settings`), compared where both sides have
#: a key (:func:`settings_differ`), so a key another transformers version spells differently or leaves out
#: refuses nothing.
_SETTING_KEYS = (
    "hidden_act", "hidden_activation", "activation_function", "layer_norm_eps", "layer_norm_epsilon",
    "rms_norm_eps", "norm_eps", "position_embedding_type", "rope_theta", "rotary_emb_base", "partial_rotary_factor",
    "rotary_pct", "query_pre_attn_scalar", "attn_logit_softcapping", "embedding_multiplier", "attention_multiplier",
    "residual_multiplier", "scale_embedding", "sliding_window", "use_sliding_window",
)


def config_settings(config) -> dict[str, str | int | float | bool]:
    """The backbone config's :data:`_SETTING_KEYS` that hold a scalar, and the RoPE parameters
    (``rope_parameters`` in transformers 5.x, ``rope_scaling`` before; ``rope_theta`` under its own name
    wherever it is kept, the others as ``rope_<name>``; RoPE kept per layer type, as Gemma 3's
    ``{"full_attention": {...}, "sliding_attention": {...}}``, as ``<layer type>.rope_<name>``). A RoPE model with
    no scaling records ``rope_type: "default"``, as transformers 5.x writes it, so that a record made where the
    config had no ``rope_scaling`` still tells a scaled RoPE apart."""
    d = config.to_dict()
    scalar = (str, int, float, bool)
    out = {k: d[k] for k in _SETTING_KEYS if isinstance(d.get(k), scalar)}

    def rope(values: dict, prefix: str = "") -> None:
        for k, v in values.items():
            if isinstance(v, scalar):
                out[prefix + (k if k.startswith("rope_") else f"rope_{k}")] = v
            elif isinstance(v, dict) and not prefix:  # one level: the layer types
                rope(v, f"{k}.")

    for group in ("rope_scaling", "rope_parameters"):
        if isinstance(d.get(group), dict):
            rope(d[group])
    if "rope_theta" in out and "rope_type" not in out:
        out["rope_type"] = "default"
    return out


#: A fixed sentence whose token ids stand for the tokenizer in the settings record: another vocabulary,
#: normalisation (case), pre-tokenisation or template of special tokens tokenizes it differently. Plain ASCII,
#: the text least likely to tokenize otherwise under a newer tokenizers release. NEVER CHANGE IT: every saved
#: adapter's record is a hash of its ids (tests/test_safety.py pins the hashes).
TOKENIZER_PROBE = "The Quick brown fox didn't see 1984's owners; e-mail: info@example.org!"


def tokenizer_probe(tokenizer) -> str | None:
    """A short hash of the token ids (special tokens included) ``tokenizer`` gives :data:`TOKENIZER_PROBE`, the
    ``tokenizer`` entry of :attr:`Backbone.settings`: the same weights with another tokenizer read label and text
    tokens as other rows of the embedding matrix. None where the tokenizer cannot be called, or does not give
    the same ids twice (BPE dropout): no record, nothing compared."""
    try:
        ids = [[int(i) for i in tokenizer(TOKENIZER_PROBE)["input_ids"]] for _ in range(5)]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode plain text fails later, by name
        return None
    if any(i != ids[0] for i in ids):
        return None
    return hashlib.sha256(json.dumps(ids[0]).encode()).hexdigest()[:16]


#: How :func:`settings_differ` names another tokenizer, and the remedy the errors add for it.
TOKENIZER_DIFFERS = ("tokenizer: it splits text differently now (a probe sentence gets other token ids: its files, a "
                     "tokenizer passed in, or the transformers / tokenizers version changed)")
TOKENIZER_REMEDY = ("; restore the tokenizer it was trained with, or train again (if you are sure the tokenizer is "
                    "the same, delete backbone_settings.tokenizer from its adapter_config.json)")


def settings_differ(saved: dict | None, current: dict | None) -> list[str]:
    """``key: trained <saved>, now <current>`` for each setting both records hold with different values; none when
    either record is missing. Numbers are equal within a relative 1e-6: a value read from a float32 field (a GGUF
    file's 1e-05 is 9.999999747e-06) is the same setting."""
    if not saved or not current:
        return []
    out = []
    for k in sorted(set(saved) & set(current)):
        a, b = saved[k], current[k]
        same = a == b if isinstance(a, str | bool) or isinstance(b, str | bool) else math.isclose(a, b, rel_tol=1e-6)
        if not same:
            out.append(TOKENIZER_DIFFERS if k == "tokenizer" else f"{k}: trained {a!r}, now {b!r}")
    return out


#: Values sampled per tensor by :func:`weights_sample`.
WEIGHT_SAMPLE_SIZE = 16


def weights_sample(model: nn.Module) -> list[float] | None:
    """A few of the model's own weight values: 16 evenly spaced values of the input embedding matrix and 16
    of its middle weight matrix (the middle one of its >= 2-D parameters in declaration order), as floats
    with 6 significant digits. An adapter stores it and refuses a backbone whose sample differs (see
    :func:`same_weights`): the config fingerprint tells architectures apart, this tells checkpoints apart.
    Cheap (32 values read) and deterministic; None where the weights cannot be read (meta tensors)."""
    try:
        embedding = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        embedding = None
    matrices = [p for p in model.parameters() if p.dim() >= 2 and p is not embedding]
    tensors = [t for t in (embedding, matrices[len(matrices) // 2] if matrices else None) if t is not None]
    values: list[float] = []
    for t in tensors:
        if t.is_meta:
            return None
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, WEIGHT_SAMPLE_SIZE, dtype=torch.float64).round().long()
        values += [float(f"{v:.6g}") for v in flat[idx.to(flat.device)].float().cpu().tolist()]
    return values or None


def same_weights(a: list[float], b: list[float], rtol: float = 1e-2, atol: float = 1e-5) -> bool:
    """Whether two :func:`weights_sample` s come from the same weights: equal within ``rtol`` (so one
    checkpoint loaded in float32, bfloat16 or float16 matches itself; bf16 rounds by at most 0.4%) plus
    ``atol`` for values near zero."""
    return len(a) == len(b) and all(abs(x - y) <= rtol * max(abs(x), abs(y)) + atol for x, y in zip(a, b, strict=True))


# The folder rule of text_pooling="auto". Every Backbone reads it, one built directly from a model too, so it
# lives here rather than in ltuning.loading (which imports this module, never the other way round).
def sentence_transformers_pooling(model_dir: str | os.PathLike) -> TextPooling | None:
    """The pooling a sentence-transformers model declares (``modules.json`` -> its Pooling module's
    ``config.json``), from a local folder or, for a hub id, the local hub cache: ``mean`` or ``cls``; None
    for other models, other modes, or anything unreadable.

    Such models (all-MiniLM-L6-v2, the packaged ``minilm``) were trained to be read through that pooling;
    their BERT pooler layer is left over from pre-training and is a poor feature for a new head.
    """
    try:
        root = Path(model_dir)
        if root.is_dir():
            def read(rel: str) -> str:
                return (root / rel).read_text()
        elif str(model_dir) and not root.is_absolute():  # a hub id: its files in the local hub cache, if any
            from huggingface_hub import try_to_load_from_cache

            def read(rel: str) -> str:
                found = try_to_load_from_cache(str(model_dir), rel)
                if not isinstance(found, str):
                    raise FileNotFoundError(rel)
                return Path(found).read_text()
        else:
            return None
        for module in json.loads(read("modules.json")):
            if str(module.get("type", "")).endswith(".Pooling"):
                sub = Path(module.get("path", ""))
                if sub.is_absolute() or ".." in sub.parts:  # never outside the model's own files
                    return None
                cfg = json.loads(read((sub / "config.json").as_posix()))
                modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
                return {"pooling_mode_mean_tokens": TextPooling.MEAN,
                        "pooling_mode_cls_token": TextPooling.CLS}.get(modes[0]) if len(modes) == 1 else None
    except (OSError, ValueError, TypeError, AttributeError, ImportError):
        return None
    return None


class LayerLock:
    """Who may run a transformers model while ltuning may swap its layers (:meth:`Backbone._only_layers`, a prefix in
    the top j < m layers): forwards that run the model as it is share it; a forward that swaps the layers holds
    it alone (re-entrant in its thread), and a waiting swap goes before new sharers. One lock per model object
    (:func:`layer_lock`), so every :class:`Backbone` over one model, every adapter sharing it, takes the same."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharers = 0
        self._owner: int | None = None  # the thread holding it alone
        self._depth = 0
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        if torch.compiler.is_compiling():  # a traced graph cannot hold a Python lock (fullgraph=True fails)
            yield
            return
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:  # (inside its own swap, a thread runs the model freely)
                while self._owner is not None or self._waiting:
                    self._cond.wait()
            self._sharers += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:
                self._waiting += 1
                try:
                    while self._owner is not None or self._sharers:
                        self._cond.wait()
                finally:  # (a KeyboardInterrupt in the wait must not leave a swap "waiting" for ever)
                    self._waiting -= 1
                    self._cond.notify_all()
                self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    self._cond.notify_all()


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(obj, make):
    with _LOCKS_GUARD:
        lock = _LOCKS.get(obj)
        if lock is None:
            lock = _LOCKS[obj] = make()
        return lock


def layer_lock(model: nn.Module) -> LayerLock:
    """The :class:`LayerLock` of a transformers model object (kept beside it, not on it: a deep copy of the model
    is another model, with its own lock)."""
    return _lock_of(model, LayerLock)


def tokenizer_lock(tokenizer) -> threading.RLock:
    """One lock per tokenizer object: a fast tokenizer keeps its truncation and padding settings on the object
    for a call, so two adapters sharing it, with other lengths, must not tokenize at the same time."""
    return _lock_of(tokenizer, threading.RLock)


class Backbone(nn.Module):
    """A frozen transformer plus its tokenizer.

    Args:
        model: a base model (``BertModel``, ``LlamaModel``, ...) or a model with a ``base_model``.
        tokenizer: its tokenizer.
        name: how the user named it (short name, folder or hub id); saved in adapters.
    Raises:
        UnsupportedModelError: the family is not in :data:`FAMILIES`, or lacks what its recipe needs.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str = "custom") -> None:
        super().__init__()
        model = getattr(model, "base_model", model)
        model_type = getattr(model.config, "model_type", None)
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"model type {model_type!r} ({type(model).__name__}) is not supported: ltuning has no recipe "
                f"for it, i.e. it does not know {_WHAT_A_FAMILY_NEEDS}. Supported model types: "
                f"{', '.join(sorted(FAMILIES))} (docs/support.md)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.family = FAMILIES[model_type]
        self.dims = read_dims(model.config)
        self.native_pooling = sentence_transformers_pooling(getattr(model.config, "_name_or_path", ""))
        self.fingerprint = config_fingerprint(model.config)
        self.settings = config_settings(model.config)
        with tokenizer_lock(tokenizer):
            probe = tokenizer_probe(tokenizer)
        if probe is not None:
            self.settings["tokenizer"] = probe
        with layer_lock(model).shared():  # (not mid-swap: a top-layers pass holds a slice of the layers)
            self.weights_sample = weights_sample(model)
        self.model.requires_grad_(False)
        self.model.eval()
        params = inspect.signature(self.model.forward).parameters
        # transformers 5.x renamed past_key_values to cache; use whichever this model takes.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # Decoders that take token_type_ids (GPT-2) would add an embedding for them: never pass them there;
        # nor to encoders with a single token type (RoBERTa), where segment B's type 1 has no embedding.
        self._takes_token_types = ("token_type_ids" in params and self.kind == "encoder"
                                   and (getattr(model.config, "type_vocab_size", 2) or 0) > 1)
        self._takes_positions = "position_ids" in params  # Bloom: ALiBi from the mask, no position ids
        self._prefix_state = None
        if self.family.prefix_via == "cache":
            if self._cache_arg not in params:
                raise UnsupportedModelError(
                    f"{type(model).__name__} takes no cache argument, which ltuning's recipe for {model_type!r} "
                    "needs to inject a prefix"
                )
        else:
            from . import prefix_attention

            try:
                self._prefix_state = prefix_attention.install(self.model, model_type)
            except (AttributeError, KeyError) as e:
                raise UnsupportedModelError(
                    f"{type(model).__name__}: cannot find the self-attention modules ltuning patches to insert a "
                    f"prefix ({e}); this transformers version lays the model out differently"
                ) from None
        self._cache_heads = (self.family.cache_heads(model.config) if self.family.cache_heads is not None
                             else self.dims.num_kv_heads)
        if self.tokenizer.pad_token_id is None or self.tokenizer.padding_side != "right":
            # a copy: the caller's tokenizer (left padding for generate(), no pad token) stays as it was
            import copy

            self.tokenizer = copy.deepcopy(self.tokenizer)
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
            self.tokenizer.padding_side = "right"  # (every call below also asks for it: a caller may set it back)
        # Special tokens the tokenizer puts before the text ([CLS], <s>): a soft prompt goes after them,
        # so the pooler still reads position 0.
        ids = self._tokenizer_call("a")["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        self.num_leading_special = 1 if ids and ids[0] in special else 0

    # The backbone stays in eval mode: it is frozen, and dropout would make scores nondeterministic.
    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)

    @property
    def kind(self) -> str:
        return self.family.kind

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def embedding_size(self) -> int:
        """Width of the input embeddings (a soft prompt's width); d for most models, less for ELECTRA-small
        or OPT-350m, which project embeddings up to d."""
        return int(self.model.get_input_embeddings().weight.shape[-1])

    def has_pooler(self) -> bool:
        return getattr(self.model, "pooler", None) is not None

    def resolve_pooling(self, pooling: TextPooling, follow_folder: bool = True) -> TextPooling:
        """The concrete pooling for ``pooling``. ``auto`` follows a sentence-transformers folder's declared
        pooling unless ``follow_folder`` is False (the rule of ltuning 0.1.0 adapters, which saved "auto")."""
        if pooling != TextPooling.AUTO:
            if pooling == TextPooling.POOLER and not self.has_pooler():
                raise ConfigError(f"text_pooling='pooler' but {self.name} has no pooler; use cls, mean or last")
            return pooling
        if self.kind == "decoder":
            return TextPooling.LAST
        if follow_folder and self.native_pooling is not None:  # a sentence encoder: its trained pooling
            return self.native_pooling
        return TextPooling.POOLER if self.has_pooler() else TextPooling.CLS

    # ------------------------------------------------------------------ tokens
    def _tokenizer_call(self, *args, **kwargs):
        """The tokenizer's call, one thread at a time per tokenizer object (:func:`tokenizer_lock`)."""
        with tokenizer_lock(self.tokenizer):
            return self.tokenizer(*args, **kwargs)

    def tokenize(self, texts: Texts, max_length: int) -> dict[str, torch.Tensor]:
        """Tokenize texts (or (premise, hypothesis) pairs) with right padding.

        Returns: input_ids and attention_mask of shape (B, n); token_type_ids where the model takes them.
        """
        if texts and isinstance(texts[0], tuple | list):
            a = [t[0] for t in texts]
            b = [t[1] for t in texts]
            if self.tokenizer.sep_token is None:  # decoders: no pair template, join with a newline
                enc = self._tokenizer_call([f"{x}\n{y}" for x, y in zip(a, b, strict=True)], truncation=True,
                                     max_length=max_length, padding=True, padding_side="right", return_tensors="pt")
            else:
                enc = self._tokenizer_call(a, b, truncation=True, max_length=max_length, padding=True,
                                     padding_side="right", return_tensors="pt")
        else:
            enc = self._tokenizer_call(list(texts), truncation=True, max_length=max_length, padding=True,
                                 padding_side="right", return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self._takes_token_types and "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    def position_table_size(self) -> int | None:
        """Size of a learned absolute position table (None: rotary / relative / ALiBi positions, no limit
        from positions)."""
        cfg = self.model.config
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or getattr(cfg, "rope_theta", None) \
                or getattr(cfg, "rope_parameters", None) or getattr(cfg, "alibi", False):
            return None
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return limit if isinstance(limit, int) else None

    def max_text_tokens(self, injected: int) -> int | None:
        """Most text tokens that fit beside ``injected`` prefix / prompt positions in a learned position
        table (None: no such limit). Longer texts would index past the table."""
        limit = self.position_table_size()
        if limit is None:
            return None
        return max(1, limit - self._position_start() - injected)

    def max_label_tokens(self) -> int:
        """The most label tokens the model itself can run: what its position table holds from the first
        position id on (RoBERTa numbers from padding_idx + 1), else its context (8192 when the config names
        none). Bounds ``label_length`` wherever it is given (:func:`ltuning.labels.check_label_length`)."""
        cfg = self.model.config
        return (self.max_text_tokens(0) or getattr(cfg, "max_position_embeddings", None)
                or getattr(cfg, "n_positions", None) or 8192)

    def label_token_length(self, label_texts: list[str]) -> int:
        """Longest tokenized label text (special tokens included)."""
        return max(len(self._tokenizer_call(t)["input_ids"]) for t in label_texts)

    def label_tokens(self, label_texts: list[str], label_length: int) -> dict[str, torch.Tensor]:
        """The label texts' tokens, cut and right-padded to ``label_length`` (on the model's device):
        input_ids, attention_mask (K, l), token_type_ids where the tokenizer gives them. The rules on them
        (length, distinct labels) are :mod:`ltuning.labels`'s."""
        # right padding whatever the tokenizer's side: the states below are read at the mask's positions
        enc = self._tokenizer_call(label_texts, truncation=True, max_length=label_length, padding="max_length",
                             padding_side="right", return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    @torch.no_grad()
    def encode_label_tokens(self, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen model once over label tokens (:meth:`label_tokens`).

        Returns: states (K, l, d) (last hidden states, zero at padding) and mask (K, l) (bool).
        """
        mask = enc["attention_mask"].bool()
        _, hidden, _ = self.hidden_states(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        states = hidden * mask.unsqueeze(-1)  # right-padded in and out: row positions are unchanged
        return states.float(), mask

    def encode_labels(self, label_texts: list[str], label_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_label_tokens` of :meth:`label_tokens`, unchecked (the model and open-vocabulary
        prediction go through :class:`ltuning.labels.LabelSet`, which checks them first)."""
        return self.encode_label_tokens(self.label_tokens(label_texts, label_length))

    @torch.no_grad()
    def encode_label_vectors(self, label_texts: list[str], pooling: TextPooling) -> torch.Tensor:
        """(K, d) the frozen model's pooled embedding of each label text, whole (not cut to l), read as a
        text is read (same tokenization, no prefix or prompt, same pooling): the sentence embedding that
        the zero-shot similarity baseline compares texts with."""
        enc = self.tokenize(list(label_texts), self.max_label_tokens())
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), pooling=pooling).float()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, n, d) frozen input embeddings."""
        with layer_lock(self.model).shared():  # (a top-layers pass hooks the embeddings' output meanwhile)
            return self.model.get_input_embeddings()(input_ids)

    # ------------------------------------------------------------------ forward
    def _position_start(self) -> int:
        start = self.family.position_start
        if start == "after_padding_idx":
            return int(self.model.config.pad_token_id) + 1
        return 0 if start == "zero" else int(start)

    def _positions(self, mask: torch.Tensor, offset: torch.Tensor | int) -> torch.Tensor:
        """Position ids that count only real tokens, so padding (left or right, or inside a padded soft
        prompt) never shifts a real token's position."""
        return (mask.long().cumsum(-1) - 1).clamp(min=0) + offset + self._position_start()

    @staticmethod
    def _packing_order(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, n) gather index that puts the real tokens first (in the order of ``keys``) and all padding last.

        Every row leaves in right-padded form whatever its padding came in as: the first real token is at
        position 0 (where poolers read), and models whose relative positions ignore position ids (DeBERTa,
        MPNet) see no gap of padding inside the sequence (as a padded soft prompt would leave).
        """
        n = mask.shape[1]
        big = keys.new_full((), 4 * n + 8)
        order_key = torch.where(mask.bool(), keys, big + torch.arange(n, device=mask.device))
        return order_key.argsort(dim=-1, stable=True)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        prompt: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        prompt_after: bool = False,
    ):
        """Run the frozen model with a prefix or a prompt.

        Args: as :meth:`forward`.
        Returns: (model output, hidden (B, n', d), mask (B, n')) where rows are right-padded: real tokens
            first in their order (with the prompt after the leading special token, or after the whole text
            with ``prompt_after``), padding last.
            n' = n (+ l with a prompt). With right-padded input and no prompt, row positions are unchanged.
        """
        if prefix is not None and prompt is not None:
            raise ConfigError("give a prefix or a prompt, not both")
        tt = token_type_ids if self._takes_token_types else None
        if prompt is not None:
            inputs, mask, tt = self._place_prompt(input_ids, attention_mask, tt, prompt, prompt_mask, prompt_after)
        else:
            inputs, mask, tt = self._pack_text(input_ids, attention_mask, tt)
        if prefix is not None and prefix.shape[1] < self.dims.num_layers:
            return self._top_prefix(inputs["input_ids"], mask, tt, prefix, prefix_mask, groups=1)
        kwargs: dict = {"use_cache": False, **inputs}
        if tt is not None:
            kwargs["token_type_ids"] = tt
        offset: torch.Tensor | int = 0
        full_mask = mask
        if prefix is not None:
            cache_kwargs, full_mask, offset = self._attach_prefix(prefix, prefix_mask, mask)
            kwargs.update(cache_kwargs)
        if self._takes_positions:
            kwargs["position_ids"] = self._positions(mask, offset)
        kwargs["attention_mask"] = full_mask
        try:
            with layer_lock(self.model).shared():
                out = self.model(**kwargs)
        finally:
            if self._prefix_state is not None:
                self._prefix_state.clear()
        return out, out.last_hidden_state, mask

    def _pack_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Rows without a prompt, right-padded (real tokens first in their order, padding last).

        Returns: (model inputs ``{"input_ids": (B, n)}``, mask (B, n), token_type_ids (B, n) or None), all
        gathered into the same order.
        """
        B, n = input_ids.shape
        order = self._packing_order(torch.arange(n, device=input_ids.device).expand(B, n), attention_mask)
        mask = attention_mask.gather(1, order)
        inputs = {"input_ids": input_ids.gather(1, order)}
        if token_type_ids is not None:
            token_type_ids = token_type_ids.gather(1, order)
        return inputs, mask, token_type_ids

    def _place_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: torch.Tensor | None, prompt: torch.Tensor, prompt_mask: torch.Tensor | None,
                      prompt_after: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Rows with a soft prompt: the prompt after the leading special token(s) of the text, or after the
        whole text with ``prompt_after`` (decoders only), right-padded.

        The text's embeddings and the prompt are concatenated, (B, n + l), each position gets a sort key,
        and :meth:`_packing_order` sorts the real positions by key and puts every padding position last.
        Example: the row ``[CLS] a b [SEP] <pad>`` (n = 5, one leading special token) with the prompt
        ``p1 p2`` (l = 2, both real). Positions, in concatenated order, and their keys:

            position   [CLS]  a   b   [SEP]  <pad>  p1  p2
            real        yes  yes yes   yes    no    yes yes
            rank         0    1   2     3     (3)
            key          0    3   4     5    last    1   2

        Text keys are the rank of each real text token (its index among the real tokens, so left padding
        changes nothing), moved up by l past the k leading special tokens (rank < k keeps its rank);
        prompt keys are k, k + 1, ... Sorted: ``[CLS] p1 p2 a b [SEP] <pad>``. With ``prompt_after``, text
        keys are the ranks themselves (0 1 2 3) and prompt keys n, n + 1 (5 6): ``[CLS] a b [SEP] p1 p2
        <pad>``. A padded prompt position (prompt_mask 0) is padding too and goes last.

        Returns: (model inputs ``{"inputs_embeds": (B, n + l, d)}``, mask (B, n + l), token_type_ids
        (B, n + l) or None, the prompt's type 0), all in the placed order.
        Raises:
            UnsupportedModelError: the prompt's width is not the input embeddings' width.
            ConfigError: ``prompt_after`` on an encoder.
        """
        B, n = input_ids.shape
        device = input_ids.device
        lp = prompt.shape[1]
        if prompt.shape[-1] != self.embedding_size:
            raise UnsupportedModelError(
                f"{self.name}: its input embeddings have width {self.embedding_size} but the soft prompt has "
                f"width {prompt.shape[-1]} (the hidden size d); prompt methods need the two equal, which "
                "models that project their embeddings (ELECTRA-small, OPT-350m) do not have. Use a prefix method"
            )
        if prompt_mask is None:
            prompt_mask = attention_mask.new_ones(B, lp)
        rank = attention_mask.long().cumsum(-1) - 1  # rank of each real text token
        if prompt_after:
            # Sort keys: the whole text, then the prompt (label_position="after", decoders only).
            if self.kind != "decoder":
                raise ConfigError(f"{self.name} is an encoder: a prompt after the text is only for decoders, "
                                  "whose causal attention keeps the text's states independent of it")
            text_key = rank
            prompt_key = n + torch.arange(lp, device=device).expand(B, lp)
        else:
            # Sort keys: the first k real text tokens, then the prompt, then the rest of the text.
            k = self.num_leading_special
            text_key = torch.where(rank < k, rank, rank + lp)
            prompt_key = k + torch.arange(lp, device=device).expand(B, lp)
        mask = torch.cat([attention_mask, prompt_mask.to(attention_mask.dtype)], dim=1)  # (B, n + l)
        order = self._packing_order(torch.cat([text_key, prompt_key], 1), mask)
        emb = self.embed(input_ids)
        embeds = torch.cat([emb, prompt.to(emb.dtype)], dim=1)
        embeds = embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        mask = mask.gather(1, order)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids, token_type_ids.new_zeros(B, lp)], 1).gather(1, order)
        return {"inputs_embeds": embeds}, mask, token_type_ids

    def _attach_prefix(self, prefix: torch.Tensor, prefix_mask: torch.Tensor | None, mask: torch.Tensor
                       ) -> tuple[dict, torch.Tensor, torch.Tensor | int]:
        """Hand a prefix (B, m, 2, n_kv, l, d_h) to the model: a fresh ``DynamicCache`` holding it
        (``prefix_via="cache"``), or the patched self-attention's PrefixState (``"attention"``; the caller
        clears it after the forward).

        Args:
            prefix_mask: (B, l) which prefix positions are attended (None: all).
            mask: (B, n) the text's mask, as the model will see it.
        Returns: (model kwargs to add: the cache, or nothing; the attention mask to pass, (B, l + n) with a
            cache, else ``mask``; the position offset of the text: the prefix's real length for decoders,
            which continue after it as after real tokens, 0 for encoders).
        Raises:
            ConfigError: the prefix's shape does not fit this model's dims.
        """
        _, j, _, n_kv, lp, d_h = prefix.shape
        m = self.dims.num_layers
        if not 1 <= j <= m or n_kv != self.dims.num_kv_heads or d_h != self.dims.head_dim:
            raise ConfigError(f"prefix shape {tuple(prefix.shape)} does not fit {self.dims}")
        prefix = prefix.to(self.dtype)
        if self._cache_heads != n_kv:  # Falcon (new architecture) caches keys repeated per query head
            prefix = prefix.repeat_interleave(self._cache_heads // n_kv, dim=3)
        if prefix_mask is None:
            prefix_mask = mask.new_ones(mask.shape[0], lp)
        prefix_mask = prefix_mask.to(mask.dtype)
        kwargs: dict = {}
        full_mask = mask
        if self.family.prefix_via == "cache":
            # A fresh cache every call: the model appends the text's keys and values to it.
            from transformers import DynamicCache

            cache = DynamicCache()
            for i in range(m):
                # A prefix of the top j layers (prefix_layers < m) runs with only those layers in the model
                # (_top_prefix); the bottom slots hold a copy that no layer reads, so that every slot has
                # l positions (the model sizes its attention mask from the first slot).
                top = max(i - (m - j), 0)
                cache.update(prefix[:, top, 0], prefix[:, top, 1], i)  # (B, heads, l, d_h) each
            kwargs[self._cache_arg] = cache
            full_mask = torch.cat([prefix_mask, mask], dim=1)  # (B, l + n)
        else:
            self._prefix_state.set(prefix, prefix_mask, first_layer=m - j)
        # Decoders continue positions after the prefix's real tokens (as after real text); encoders start at 0.
        offset: torch.Tensor | int = prefix_mask.long().sum(-1, keepdim=True) if self.kind == "decoder" else 0
        return kwargs, full_mask, offset

    # ------------------------------------------------------------------ prefix in the top j layers only
    @property
    def splits_layers(self) -> bool:
        """Whether a prefix may enter the top j < m layers only (the family has a :class:`Layout`)."""
        return self.family.layout is not None

    def check_prefix_layers(self, j: int, option: str = "prefix_layers (--prefix-layers)") -> None:
        """Refuse a label prefix depth this backbone cannot run.

        Raises:
            ConfigError: ``j`` is not an integer in [1, m].
            UnsupportedModelError: j < m on a family that has no :class:`Layout`.
        """
        m = self.dims.num_layers
        if isinstance(j, bool) or not isinstance(j, int) or not 1 <= j <= m:
            raise ConfigError(f"{option} must be an integer from 1 to m = {m} (the layers of {self.name}), got {j!r}")
        layer_types = getattr(self.model.config, "layer_types", None)
        if j < m and isinstance(layer_types, list | tuple) and len(set(layer_types)) > 1:
            # the model picks each layer's mask by the layer's position in the loop (config.layer_types[i]),
            # which restarts at 0 in the top-layers pass: a sliding-window layer would get full attention
            raise UnsupportedModelError(
                f"{option} = {j} < m = {m} is not supported for this {self.model.config.model_type!r} model: its "
                f"layers mix attention types ({', '.join(sorted(set(layer_types)))}, e.g. a sliding window), which "
                f"the top-layers pass cannot keep; leave {option.split()[0]} unset (every layer)")
        if j < m and not self.splits_layers:
            raise UnsupportedModelError(
                f"{option} = {j} < m = {m} is not supported for model type {self.model.config.model_type!r}: "
                f"ltuning cannot run its top layers apart from the bottom ones; leave {option.split()[0]} unset "
                f"(every layer). Supported: {', '.join(sorted(k for k, f in FAMILIES.items() if f.layout))}")

    def _module(self, path: str) -> tuple[nn.Module, str]:
        """(parent, attribute name) of a dotted module path of the model."""
        parent, _, name = path.rpartition(".")
        return (self.model.get_submodule(parent) if parent else self.model), name

    @contextmanager
    def _only_layers(self, start: int, stop: int, embeddings: torch.Tensor | None = None) -> Iterator[None]:
        """The model runs layers ``start:stop`` only while inside: its layer list is swapped for that slice (the
        layers keep their own index, which their cache slot and patched attention read); the final norm is
        skipped when the last layer is not run; the module applied after the first layer is off when the first
        layer is not run; with ``embeddings``, the first layer's input is that tensor (a forward hook replaces
        the embedding module's output). Everything is put back on the way out."""
        layout = self.family.layout
        m = self.dims.num_layers
        # the lock first: another thread's swap may be in place until then (its slice would be sliced here)
        with layer_lock(self.model).exclusive():  # no other forward on this model sees the swapped layers
            parent, name = self._module(layout.layers)
            swaps = [(parent, name, getattr(parent, name)[start:stop])]
            if stop < m and layout.final_norm is not None:
                swaps.append((*self._module(layout.final_norm), nn.Identity()))
            if start > 0 and layout.after_first_layer is not None:
                swaps.append((*self._module(layout.after_first_layer), None))
            saved = [(p, n, getattr(p, n)) for p, n, _ in swaps]
            handle = None
            try:
                for p, n, new in swaps:
                    setattr(p, n, new)
                if embeddings is not None:
                    path = next(e for e in layout.embeddings if self._has_module(e))
                    handle = self.model.get_submodule(path).register_forward_hook(lambda _m, _a, _o: embeddings)
                yield
            finally:
                if handle is not None:
                    handle.remove()
                for p, n, old in saved:
                    setattr(p, n, old)

    def _has_module(self, path: str) -> bool:
        try:
            self.model.get_submodule(path)
        except AttributeError:
            return False
        return True

    def _top_prefix(self, input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                    prefix: torch.Tensor, prefix_mask: torch.Tensor | None, groups: int):
        """A prefix (B*G, j, 2, n_kv, l, d_h) in the top j < m layers only, for B texts and G groups each (row
        b*G + g: text b with prefix row b*G + g): the texts run through the embeddings and the bottom m - j
        layers once, without a prefix and without gradients (nothing trainable is there); their hidden states
        and masks are repeated G times; the top j layers run on the B*G rows with the prefix. With G = 1 this
        is the plain path, one row per prefix. Positions are those of the one-pass path: decoders' text
        positions continue after the prefix's real length in every layer, which is why, with a ``prefix_mask``
        whose real lengths differ between the G groups of a text, the bottom runs on all B*G rows instead.

        Args:
            input_ids, mask, token_type_ids: (B, n) right-packed texts (:meth:`_pack_text`).
        Returns: as :meth:`hidden_states`, for the B*G rows.
        """
        m, j = self.dims.num_layers, prefix.shape[1]
        if not self.splits_layers:
            self.check_prefix_layers(j)
        B = input_ids.shape[0]
        if self.kind == "decoder" and prefix_mask is not None and groups > 1:
            real = prefix_mask.long().sum(-1).view(B, groups)
            if not bool((real == real[:, :1]).all()):
                def rep(t):
                    return None if t is None else t.repeat_interleave(groups, dim=0)
                return self._top_prefix(rep(input_ids), rep(mask), rep(token_type_ids), prefix, prefix_mask, 1)
        kwargs: dict = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        offset: torch.Tensor | int = 0
        if self.kind == "decoder":
            offset = (prefix.shape[4] if prefix_mask is None else
                      prefix_mask.long().sum(-1, keepdim=True).view(B, groups)[:, :1])
        if self._takes_positions:
            kwargs["position_ids"] = self._positions(mask, offset)
        with torch.no_grad(), self._only_layers(0, m - j):  # (each swap holds the model's layer lock alone)
            bottom = self.model(**kwargs).last_hidden_state  # (B, n, d)
        if groups > 1:
            bottom = bottom.repeat_interleave(groups, dim=0)
            kwargs = {k: v.repeat_interleave(groups, dim=0) if torch.is_tensor(v) else v for k, v in kwargs.items()}
            mask = kwargs["attention_mask"]
        cache_kwargs, kwargs["attention_mask"], _ = self._attach_prefix(prefix, prefix_mask, mask)
        kwargs.update(cache_kwargs)
        try:
            with self._only_layers(m - j, m, embeddings=bottom):
                out = self.model(**kwargs)
        finally:
            if self._prefix_state is not None:
                self._prefix_state.clear()
        return out, out.last_hidden_state, mask

    def shares_bottom(self, prefix: torch.Tensor | None) -> bool:
        """Whether :meth:`pooled_per_prefix` computes the texts' bottom layers once for all G prefixes: a
        prefix of the top j < m layers."""
        return prefix is not None and prefix.shape[1] < self.dims.num_layers

    def pooled_per_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          token_type_ids: torch.Tensor | None, prefix: torch.Tensor,
                          pooling: TextPooling = TextPooling.AUTO, prefix_mask: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """Every text under every one of G prefixes: (B, G, d), what :meth:`forward` gives for the B*G rows
        (text b, prefix g) in the order b*G + g.

        With a prefix of the top j < m layers (``prefix_layers``), each text's embeddings and bottom m - j
        layers run once and are shared by the G prefixes: a text costs (m - j) + G*j layer passes instead of
        G*m. With j = m the B*G rows run whole.

        Args:
            input_ids, attention_mask, token_type_ids: (B, n) texts, right- or left-padded.
            prefix: (G, j, 2, n_kv, l, d_h); prefix_mask: (G, l) or None.
        """
        B, G = input_ids.shape[0], prefix.shape[0]
        big_prefix = prefix.repeat(B, *([1] * (prefix.dim() - 1)))  # row b*G + g: prefix g
        big_mask = None if prefix_mask is None else prefix_mask.repeat(B, 1)
        if not self.shares_bottom(prefix):
            def rep(t):
                return None if t is None else t.repeat_interleave(G, dim=0)
            pooled = self(rep(input_ids), rep(attention_mask), rep(token_type_ids), prefix=big_prefix,
                          pooling=pooling, prefix_mask=big_mask)
            return pooled.view(B, G, -1)
        tt = token_type_ids if self._takes_token_types else None
        inputs, mask, tt = self._pack_text(input_ids, attention_mask, tt)
        out, hidden, mask = self._top_prefix(inputs["input_ids"], mask, tt, big_prefix, big_mask, groups=G)
        return self._pool(out, hidden, mask, self.resolve_pooling(pooling)).view(B, G, -1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        prompt: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        pooling: TextPooling = TextPooling.AUTO,
        prefix_mask: torch.Tensor | None = None,
        prompt_after: bool = False,
    ) -> torch.Tensor:
        """Pooled vector per row.

        Args:
            input_ids, attention_mask: (B, n) text tokens, right- or left-padded (same result either way).
            token_type_ids: (B, n) for models that take them (ignored by decoders).
            prefix: (B, j, 2, n_kv, l, d_h) keys and values seen by the top j layers (j = m: every layer; j < m:
                the layers below run without it, see :meth:`_top_prefix`).
            prompt: (B, l, d) soft prompt placed after the leading special token; prompt_mask (B, l).
            pooling: which vector to return.
            prefix_mask: (B, l) which prefix positions are attended (default: all).
            prompt_after: decoders: place the prompt after the text ([text][prompt]) instead of before it.
        Returns: (B, d).
        """
        out, hidden, mask = self.hidden_states(input_ids, attention_mask, token_type_ids, prefix=prefix,
                                               prompt=prompt, prompt_mask=prompt_mask, prefix_mask=prefix_mask,
                                               prompt_after=prompt_after)
        return self._pool(out, hidden, mask, self.resolve_pooling(pooling))

    @torch.no_grad()
    def last_of_prompt_after_shared_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                         prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Decoders, prediction: every text followed by every one of G prompts, the text computed once.

        Gives what :meth:`forward` gives with ``prompt_after=True`` and ``pooling="last"`` for the B*G rows
        [text b][prompt g], at a cost of n + G*l positions per text instead of G*(n + l) (a model whose
        sliding-window attention is narrower than n + l runs the G*(n + l) full rows instead): the B texts run
        once and fill a cache; the cache is repeated G times; then only the G*l prompt positions of each
        text run, with position ids that continue after the text's real tokens and an attention mask that
        hides the text's padding.

        Args:
            input_ids, attention_mask: (B, n) texts, right- or left-padded.
            prompt: (G, l, d) soft prompts; prompt_mask: (G, l) their real positions (right-padded).
        Returns: (B, G, d) the hidden state at each row's last real prompt position.
        """
        if self.kind != "decoder" or self.family.prefix_via != "cache":
            raise ConfigError(f"{self.name}: a text cache shared by the labels needs a decoder that takes a cache")
        from transformers import DynamicCache

        B, n = input_ids.shape
        G, lp, _ = prompt.shape
        order = self._packing_order(torch.arange(n, device=input_ids.device).expand(B, n), attention_mask)
        mask = attention_mask.gather(1, order)
        n = int(mask.sum(-1).max())  # right-padded now: drop all-padding columns
        mask, ids = mask[:, :n], input_ids.gather(1, order)[:, :n]
        window = getattr(self.model.config, "sliding_window", None)
        if isinstance(window, int) and n + lp > window:
            # Sliding-window layers count padding inside their window: the text's padding, which here sits
            # between text and prompt, would push real tokens out of it. Run the B*G full rows instead.
            _, hidden, full = self.hidden_states(ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0),
                                                 prompt=prompt.repeat(B, 1, 1), prompt_mask=prompt_mask.repeat(B, 1),
                                                 prompt_after=True)
            return self._pool(None, hidden, full, TextPooling.LAST).view(B, G, -1)
        cache = DynamicCache(config=self.model.config)
        text = {"input_ids": ids, "attention_mask": mask, self._cache_arg: cache, "use_cache": True}
        if self._takes_positions:
            text["position_ids"] = self._positions(mask, 0)
        with layer_lock(self.model).shared():
            self.model(**text)
        cache.batch_repeat_interleave(G)  # row b*G + g: text b, then prompt g
        pmask = prompt_mask.to(mask.dtype).repeat(B, 1)  # (B*G, l)
        full = torch.cat([mask.repeat_interleave(G, dim=0), pmask], dim=1)  # (B*G, n + l)
        rest = {"inputs_embeds": prompt.to(self.dtype).repeat(B, 1, 1), "attention_mask": full,
                self._cache_arg: cache, "use_cache": True}
        if self._takes_positions:
            rest["position_ids"] = self._positions(full, 0)[:, n:]
        with layer_lock(self.model).shared():
            hidden = self.model(**rest).last_hidden_state  # (B*G, l, d)
        last = lp - 1 - pmask.flip(-1).long().argmax(-1)  # last real prompt position of each row
        return hidden[torch.arange(B * G, device=hidden.device), last].view(B, G, -1)

    def _pool(self, out, hidden: torch.Tensor, mask: torch.Tensor, pooling: TextPooling) -> torch.Tensor:
        if pooling == TextPooling.POOLER:
            return out.pooler_output
        if pooling == TextPooling.CLS:
            return hidden[:, 0]  # rows are right-padded: the first real token
        if pooling == TextPooling.MEAN:
            w = mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
        # LAST: the last real token, wherever padding is.
        n = mask.shape[1]
        idx = n - 1 - mask.flip(-1).long().argmax(-1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
