"""ONNX export: the frozen backbone with an adapter's label prefixes / prompts baked in, for its fixed labels.

The graph takes a batch of tokenized texts (``input_ids``, ``attention_mask`` and, where the backbone has
them, ``token_type_ids``; (N, n) int64, right-padded as :meth:`LTuningModel.tokenize` gives them) and
returns ``scores`` (N, K): what :meth:`LTuningModel.score_texts` returns (pair logits for the LT methods,
class logits for the classic prefix / prompt). A softmax over K gives ``predict``'s scores.

How (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``):

- :class:`OnnxScorer` holds the injection (prefix or prompt for every label, and the label vectors of the
  similarity, anchored and cosine heads) as constant buffers, computed once from the adapter, and runs the model's own
  :meth:`LTuningModel.class_scores` on them (the K rows of every text).
- Placing a prompt, and packing rows right-padded, sorts sort keys with a *stable* argsort, which no
  ONNX exporter converts (``aten.sort.stable``). While exporting, the backbone's ``_packing_order`` is
  replaced on the instance by :func:`topk_packing_order`: the same permutation through ``TopK``. The keys of
  a row are distinct integers (real positions: distinct ranks or prompt slots; padding: 4n + 8 + its
  index), so any sort gives the one order a stable sort gives; tests/test_export.py checks both on random
  masks. Nothing changes outside the export.
- Decoder adapters with ``label_position="after"`` run the full [text][label prompt] rows in the graph (the
  shared-text path has a data-dependent shape); the scores are the same (docs/design.md).

The output is written to a temporary file beside it and renamed, and never replaces an existing file
unless ``overwrite``. Metadata (method, base model, label names and texts, text length, version) travels
in the ONNX model's ``metadata_props`` (keys ``ltuning.*``; :func:`read_metadata`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ._version import __version__
from .adapter import load_adapter
from .config import check_arg
from .errors import ConfigError, DataError
from .fileio import set_normal_mode
from .methods import Injection
from .model import LTuningModel

FORMATS = ("onnx",)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "scores"
#: The largest difference between onnxruntime's and PyTorch's scores that :func:`export_onnx` accepts.
TOLERANCE = 1e-4


def require_onnx() -> None:
    """onnx, onnxscript (the dynamo exporter) and onnxruntime (the check after export), or a clear error."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'ltuning[onnx]' "
                          "(onnx, onnxscript, onnxruntime)")


def topk_packing_order(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:meth:`Backbone._packing_order` through ``topk`` (ONNX ``TopK``) instead of a stable argsort: the same
    permutation, since the keys of a row are distinct (see the module docstring)."""
    n = mask.shape[1]
    big = keys.new_full((), 4 * n + 8)
    order_key = torch.where(mask.bool(), keys, big + torch.arange(n, device=mask.device))
    return torch.topk(order_key, n, dim=-1, largest=False, sorted=True).indices


class OnnxScorer(nn.Module):
    """(N, K) label scores of tokenized texts, with the adapter's injection as constants."""

    def __init__(self, model: LTuningModel) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            inj = model._method_injection()
        for name in ("prefix", "prompt", "prompt_mask", "label_vectors"):
            value = getattr(inj, name)
            self.register_buffer(name, None if value is None else value.detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        inj = Injection(self.prefix, self.prompt, self.prompt_mask, self.label_vectors)
        return self.model.class_scores(batch, injection=inj).float()


@contextlib.contextmanager
def exportable(model: LTuningModel):
    """While exporting: the backbone packs rows through ``TopK``, and prediction runs full rows (no shared
    text cache). Both are set on the instances and removed afterwards."""
    model.backbone._packing_order = topk_packing_order
    model.shares_text = lambda: False
    try:
        yield
    finally:
        del model.backbone._packing_order
        del model.shares_text


def input_names(model: LTuningModel) -> list[str]:
    """The graph's inputs for this backbone (token_type_ids where the model takes them)."""
    enc = model.tokenize(_example_texts(model)[:1])
    return [k for k in INPUT_NAMES if k in enc]


def _example_texts(model: LTuningModel) -> list:
    """Texts of three different lengths (so no traced dimension is 1): the label texts joined, and pairs of
    them for a pair adapter."""
    texts = list(model.config.label_texts)
    words = " ".join(texts)
    singles = [texts[0], words, f"{words} {words}"]
    if model.config.text_pairs:
        return [(t, texts[-1]) for t in singles]
    return singles


def metadata(model: LTuningModel, names: list[str]) -> dict[str, str]:
    cfg = model.config
    return {
        "ltuning.version": __version__,
        "ltuning.method": cfg.method,
        "ltuning.base_model": str(cfg.base_model),
        "ltuning.backbone_fingerprint": str(cfg.backbone_fingerprint),
        "ltuning.label_names": json.dumps(list(cfg.label_names)),
        "ltuning.label_texts": json.dumps(list(cfg.label_texts)),
        "ltuning.text_max_length": str(model.text_max_length),
        "ltuning.text_pairs": json.dumps(cfg.text_pairs),
        "ltuning.inputs": json.dumps(names),
        "ltuning.scores": ("pair logits (N, K), one per label: softmax over K for single-label scores, sigmoid "
                           "for multi-label" if model.label_conditioned else
                           "class logits (N, K): softmax over K for scores"),
    }


#: The lowest opset the exporter writes these graphs in (torch's dynamo exporter).
MIN_OPSET = 18

#: The metadata values :func:`metadata` writes as JSON (the rest are plain strings, text_max_length a number).
JSON_METADATA = ("label_names", "label_texts", "text_pairs", "inputs")


def read_metadata(path: str | Path) -> dict:
    """The ``ltuning.*`` metadata of an exported file: the JSON ones decoded, ``text_max_length`` an int, the
    rest as written (a fingerprint of digits stays a string)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for prop in proto.metadata_props:
        if prop.key.startswith("ltuning."):
            key = prop.key.removeprefix("ltuning.")
            try:
                out[key] = (json.loads(prop.value) if key in JSON_METADATA else
                            int(prop.value) if key == "text_max_length" else prop.value)
            except ValueError:
                out[key] = prop.value
    return out


def _write_new(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``path``: a rename with ``overwrite``, else a hard link that fails on an existing file
    (so a file created meanwhile is not replaced either)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ConfigError(f"{path} exists; pass --overwrite (overwrite=True) to replace it") from None
    except OSError:  # no hard links here (some file systems): check, then rename
        if path.exists():
            raise ConfigError(f"{path} exists; pass --overwrite (overwrite=True) to replace it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse a folder, an existing file without ``overwrite``, a missing parent folder or one we may not write
    into, before any work."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file path such as {path / 'model.onnx'}")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {path}: cannot write into {path.parent} (permission denied)")
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_scores(session, model: LTuningModel, texts: list) -> torch.Tensor:
    """(N, K) scores of ``texts`` from an onnxruntime session, tokenized as the model tokenizes."""
    names = {i.name for i in session.get_inputs()}
    enc = model.tokenize(texts)
    feeds = {k: v.cpu().numpy() for k, v in enc.items() if k in names}
    return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])


def _checked_texts(model: LTuningModel, check_texts) -> list:
    """``check_texts`` as a list of the model's inputs (default: :func:`_example_texts`).
    Raises: DataError naming ``check_texts``."""
    from .prediction import check_texts as check_items
    from .prediction import text_list

    if check_texts is None:
        return _example_texts(model)
    try:
        items = text_list(check_texts)
        check_items(items, pairs=model.config.text_pairs)
    except DataError as e:  # named as the argument it is here
        message = str(e)
        raise DataError("check_" + message if message.startswith("texts") else f"check_texts: {message}") from None
    if not items:
        raise DataError("check_texts is empty: give at least one text to compare onnxruntime with PyTorch on")
    return items


def export_onnx(model: LTuningModel | str | Path, output: str | Path, overwrite: bool = False,
                opset: int | None = None, check_texts: list | None = None) -> dict:
    """Export ``model`` (or the adapter folder it names) to ``output`` as ONNX; check it with onnxruntime.

    Returns: {"output", "inputs", "labels", "max_abs_diff" (onnxruntime against PyTorch on ``check_texts``,
    default: three texts made of the label texts), "opset"}.
    Raises:
        ConfigError: onnx / onnxscript / onnxruntime missing, ``output`` exists (without ``overwrite``) or is
            a folder, or the exported graph's scores differ from PyTorch's by more than :data:`TOLERANCE`
            (nothing is written then).
        DataError: ``check_texts`` is not a non-empty list of the model's inputs (texts, or pairs for a pair
            adapter).
    """
    require_onnx()
    if opset is not None:
        import onnx

        # below 18 the exporter's down-conversion fails on these graphs and it writes opset 18 anyway (after a
        # traceback); above onnx's newest there is no such opset (one onnxruntime cannot load is refused below)
        newest = onnx.defs.onnx_opset_version()
        check_arg(isinstance(opset, int) and not isinstance(opset, bool) and MIN_OPSET <= opset <= newest, "opset",
                  f"an ONNX opset from {MIN_OPSET} to {newest} (--opset)", opset)
    path = check_output(output, overwrite)
    if not isinstance(model, LTuningModel):
        model = load_adapter(model)
    model.eval()
    check = _checked_texts(model, check_texts)  # before the export's seconds of work
    texts = _example_texts(model)
    names = input_names(model)
    enc = model.tokenize(texts)
    args = tuple(enc[k] for k in names)
    dim = torch.export.Dim.DYNAMIC
    shapes = {k: {0: dim, 1: dim} for k in names}
    scorer = OnnxScorer(model).eval()
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." for each of its ops
    try:
        with exportable(model), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(scorer, args, None, input_names=names, output_names=[OUTPUT_NAME],
                                        dynamic_shapes=shapes, dynamo=True, opset_version=opset, verbose=False)
    finally:
        onnx_log.setLevel(level)
    program.model.metadata_props.update(metadata(model, names))
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        program.save(str(tmp), external_data=False)
        set_normal_mode(tmp)
        try:
            session = onnx_session(tmp)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types (InvalidGraph, Fail, ...)
            asked = f"--opset {opset}" if opset is not None else "the exporter's opset"
            raise ConfigError(f"onnxruntime cannot load the graph exported at {asked}: "
                              f"{str(e).splitlines()[0][:300]}; give a lower --opset (opset=), or none for the "
                              "exporter's; nothing written") from None
        got = onnx_scores(session, model, check)
        want = model.score_texts(check)
        diff = float((got - want).abs().max())
        if not diff <= TOLERANCE:
            raise ConfigError(f"the exported graph's scores differ from PyTorch's by {diff:.2e} (more than "
                              f"{TOLERANCE:g}); nothing written")
        _write_new(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return {"output": str(path), "inputs": names, "labels": list(model.label_names), "max_abs_diff": diff,
            "opset": int(program.model.graph.opset_imports.get("", 0))}
