"""Hostile input, generated (hypothesis): data files, label texts, adapter folders and CLI flags.

Every case must end in a clear error (an LTuningError subclass, or one ``error:`` line from the CLI) or
a documented behaviour (a valid dataset / a loaded adapter) -- never another exception, a traceback, a
hang or a half-written file. ``CASES`` counts each test's cases by outcome; the last test checks that
every outcome was reached (a fuzz test whose cases all end in errors checks little) and prints the counts.
"""

from __future__ import annotations

import json
import struct
from collections import Counter

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ltuning.errors import AdapterError, DataError, LTuningError  # noqa: E402

CASES: Counter = Counter()
FAST = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------- data files
PIECES = ["text", "label", "a good film", "bad", "positive", "negative", " ", "", "\t", ",", '"', "'", "\n", "\r\n",
          "\x00", "\ufeff", "é", "日本", "\u200b", "0", "1", "2", "-1", "1.0", "nan", "inf", "True", "null", "{", "}",
          "[", "]", ":", '{"text": "a", "label": "b"}', "x" * 300]
cell = st.one_of(st.sampled_from(PIECES), st.text(max_size=20))
row = st.lists(cell, min_size=0, max_size=5)


@st.composite
def table_file(draw):
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".txt", ""]))
    kind = draw(st.sampled_from(["rows", "bytes", "huge", "deep", "jsonrows", "table"]))
    if kind == "table":  # a well-formed file in the suffix's format, with the quirks real files have
        cell = st.sampled_from(["a good film", "bad", "it was fun", "日本", "é", 'she said "no"', "x, y", "1.0"])
        label = st.sampled_from(["negative", "positive", "0", "1"])
        rows = [{"text": draw(cell), "other": draw(cell), "label": draw(label)} for _ in range(draw(st.integers(1, 6)))]
        if suffix in (".jsonl", ".json"):
            lines = [json.dumps(r, ensure_ascii=draw(st.booleans())) for r in rows]
            text = "[" + ",\n".join(lines) + "]" if suffix == ".json" and draw(st.booleans()) else "\n".join(lines)
        else:
            sep = "," if suffix == ".csv" else "\t"
            quote = (lambda v: '"' + v.replace('"', '""') + '"') if sep == "," else (lambda v: v)
            text = "\n".join(sep.join(map(quote, r)) for r in [["text", "other", "label"], *map(dict.values, rows)])
        text = text.replace("\n", draw(st.sampled_from(["\n", "\r\n"]))) + draw(st.sampled_from(["", "\n", "\n\n"]))
        data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode()
        return (suffix, data, draw(st.sampled_from([["text"], ["text", "other"], ["other"]])), "label",
                draw(st.sampled_from([None, ["negative", "positive"], ["0", "1"]])), True)
    if kind == "bytes":
        data = draw(st.binary(max_size=400))
    elif kind == "huge":  # one field far over any default csv limit
        data = ("text,label\n" + "w " * 200_000 + ",positive\nbad,negative\n").encode()
    elif kind == "deep":
        data = draw(st.sampled_from([b"[" * 50_000, b'{"text": "a", "label": ' + b"9" * 5000 + b"}", b"{" * 20_000]))
    elif kind == "jsonrows":
        value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(PIECES),
                          st.lists(st.integers(), max_size=2))
        rows = draw(st.lists(st.dictionaries(st.sampled_from(["text", "label", "other"]), value, max_size=3),
                             max_size=6))
        data = "\n".join(json.dumps(r) for r in rows).encode()
    else:
        sep = draw(st.sampled_from([",", "\t", ";"]))
        lines = draw(st.lists(row, max_size=8))
        text = "\n".join(sep.join(r) for r in lines)
        encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1", "cp1252", "utf-8-sig"]))
        data = text.encode(encoding, errors="replace")
    text_cols = draw(st.sampled_from([["text"], ["text", "label"], [0], ["0"], [5], ["missing"], [], ["a", "b", "c"]]))
    label_col = draw(st.sampled_from(["label", "text", 1, "1", 9, "missing"]))
    label_names = draw(st.sampled_from([None, ["negative", "positive"], ["a", "a"], [" ", "x"], ["only"]]))
    header = draw(st.booleans())
    return suffix, data, text_cols, label_col, label_names, header


@FAST
@given(case=table_file())
def test_readers_fuzz(tmp_path_factory, case):
    from ltuning.data import read_table

    suffix, data, text_cols, label_col, label_names, header = case
    path = tmp_path_factory.mktemp("f") / f"data{suffix}"
    path.write_bytes(data)
    try:
        ds = read_table(path, text_cols, label_col, label_names, header=header)
    except DataError as e:
        CASES["readers", "error"] += 1
        assert str(e) and "\n" not in str(e) and len(str(e)) < 2000, str(e)  # one short line
        return
    CASES["readers", "read"] += 1
    # documented behaviour: a consistent dataset
    assert len(ds) == len(ds.labels) > 0
    assert len(ds.label_names) >= 2 and len(set(ds.label_names)) == len(ds.label_names)
    assert all(0 <= y < len(ds.label_names) for y in ds.labels)
    for t in ds.texts:
        parts = t if isinstance(t, tuple) else (t,)
        assert all(isinstance(p, str) and p.strip() for p in parts)


@FAST
@given(spec=st.one_of(st.text(max_size=60), st.sampled_from(["[" * 20_000, "x" * 5000, "x" * 5000 + ".json",
                                                             "nope.json", '{"negative": "", "positive": "p"}',
                                                             '["a", "a"]', "null", "1e999", ",", " , "])),
       names=st.sampled_from([["negative", "positive"], ["a", "b", "c"]]))
def test_label_texts_fuzz(spec, names):
    from ltuning.data import load_label_texts

    try:
        texts = load_label_texts(spec, names)
    except DataError:
        CASES["label_texts", "error"] += 1
        return
    CASES["label_texts", "read"] += 1
    assert len(texts) == len(names) and all(isinstance(t, str) and t.strip() for t in texts)


# ---------------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from conftest import tiny_bert

    from ltuning.adapter import save_adapter
    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.model import LTuningModel

    m, tok = tiny_bert()
    backbone = Backbone(m, tok, "tiny")
    model = LTuningModel(backbone, LTuningConfig(method="lt-prefix", label_names=["negative", "positive"],
                                                 prefix_pooling="raw"))
    folder = save_adapter(model, tmp_path_factory.mktemp("adapter") / "a")
    return {"folder": folder, "backbone": backbone, "config": json.loads((folder / "adapter_config.json").read_text()),
            "weights": (folder / "adapter_model.safetensors").read_bytes()}


json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                                    st.sampled_from(PIECES)),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                          max_leaves=6)


@st.composite
def adapter_mutation(draw, config_keys):
    kind = draw(st.sampled_from(["truncate", "flip", "random", "header", "config-field", "config-drop",
                                 "config-garbage", "shapes", "label-length"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, 2000))
    if kind == "flip":
        return kind, draw(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=8))
    if kind == "random":
        return kind, draw(st.binary(max_size=300))
    if kind == "header":
        return kind, draw(st.sampled_from([2**63, 2**40, 0, 7, 10**6]))
    if kind == "config-field":
        return kind, (draw(st.sampled_from(config_keys)), draw(json_value))
    if kind == "config-drop":
        return kind, draw(st.sampled_from(config_keys))
    if kind == "config-garbage":
        return kind, draw(st.one_of(st.binary(max_size=100), json_value.map(lambda v: json.dumps(v).encode())))
    if kind == "label-length":
        return kind, draw(st.sampled_from([0, -1, 1, 2, 4, 10**9, 10**15, "3", 2.5]))
    return kind, draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))


CONFIG_KEYS = ["method", "base_model", "label_names", "label_texts", "label_length", "max_length", "prefix_pooling",
               "text_pooling", "label_position", "score_head", "text_pairs", "backbone_fingerprint", "_meta", "weights",
               "unknown"]


@settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mutation=adapter_mutation(CONFIG_KEYS))
def test_adapter_loader_fuzz(adapter, tmp_path_factory, mutation):
    from safetensors.torch import load_file, save_file

    from ltuning.adapter import load_adapter

    folder = tmp_path_factory.mktemp("mut")
    config, weights = dict(adapter["config"]), adapter["weights"]
    kind, arg = mutation
    config_bytes = None
    if kind == "truncate":
        weights = weights[:arg]
    elif kind == "flip":
        b = bytearray(weights)
        for i, v in arg:
            b[i % len(b)] = v
        weights = bytes(b)
    elif kind == "random":
        weights = arg
    elif kind == "header":
        weights = struct.pack("<Q", arg) + weights[8:]
    elif kind == "config-field":
        config[arg[0]] = arg[1]
    elif kind == "config-drop":
        config.pop(arg, None)
    elif kind == "config-garbage":
        config_bytes = arg
    elif kind == "label-length":
        config["label_length"] = arg
    elif kind == "shapes":
        import torch

        (folder / "w.safetensors").write_bytes(weights)
        state = load_file(str(folder / "w.safetensors"))
        state = {k: torch.zeros([max(1, s + d - 2) for s, d in zip(v.shape, arg, strict=False)]) for k, v in state.items()}
        save_file(state, str(folder / "w.safetensors"))
        weights = (folder / "w.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "adapter_config.json").write_bytes(config_bytes if config_bytes is not None else json.dumps(config).encode())
    try:
        model = load_adapter(folder, backbone=adapter["backbone"])
    except AdapterError as e:
        CASES["adapter", "error"] += 1
        assert str(e) and "\n" not in str(e)
        if kind == "config-field" and arg[0] not in ("_meta", "weights", "unknown", "base_model"):
            # a bad field is named (the model's own checks name theirs: label texts, lengths, fingerprints)
            assert arg[0] in str(e) or arg[0].replace("_", " ") in str(e) or "label" in str(e), (arg, str(e))
        return
    # documented behaviour: a field the loader does not need, or a byte it does not read, was changed
    CASES["adapter", "loaded"] += 1
    assert model.predict(["a good film"])[0] in model.label_names


# ---------------------------------------------------------------------- CLI flags
@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    from test_cli import TRAIN, VALID, save_tiny_bert, write_csv

    root = tmp_path_factory.mktemp("cli")
    return {"model": str(save_tiny_bert(root / "m")), "train": str(write_csv(root / "t.csv", TRAIN)),
            "valid": str(write_csv(root / "v.csv", VALID)), "root": root}


FLAG_VALUES = {
    "--max-steps": ["1", "2", "0", "-1", "x", "1.5", ""],
    "--batch-size": ["2", "4", "1", "0", "-3", "99999", "two"],
    "--learning-rate": ["0.01", "0", "-1", "nan", "inf", "1e308", "abc"],
    "--warmup-ratio": ["0", "0.5", "1", "-0.1", "nan"],
    "--eval-every": ["1", "0", "-2"],
    "--eval-batch-size": ["1", "0", "64"],
    "--max-length": ["1", "0", "-5", "100000", "8"],
    "--label-length": ["1", "0", "3", "99999999999", "-2"],
    "--label-texts": ["a,b", "", " , ", "[\"x\"]", "{\"negative\": \"n\"}", "[[[[", "x" * 5000, "missing.json"],
    "--seed": ["0", "-1", "123", "99999999999999999999"],
    "--gradient-accumulation-steps": ["1", "2", "0", "-1"],
    "--checkpoint-every": ["0", "1", "-1"],
    "--keep-checkpoints": ["1", "0", "-1"],
    "--max-train-samples": ["1", "2", "0", "100"],
    "--prefix-pooling": ["raw", "softmax", "bogus"],
    "--text-pooling": ["auto", "mean", "last", "cls", "pooler", "bogus"],
    "--method": ["lt-prefix", "lt-prompt", "prefix", "prompt", "lora"],
    "--text-column": ["text", "label", "missing", "0"],
    "--label-column": ["label", "text", "missing"],
    "--weight-decay": ["0", "-1", "nan"],
}
SWITCHES = ["--resume", "--skip-nonfinite", "--quiet", "--bf16", "--trust-remote-code"]


@st.composite
def train_argv(draw):
    flags = draw(st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.none(), max_size=4))
    argv = [a for f in flags for a in (f, draw(st.sampled_from(FLAG_VALUES[f])))]
    argv += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
    if draw(st.booleans()):
        argv += draw(st.sampled_from([["--unknown-flag"], ["--max-steps"], ["extra-positional"], ["--help"]]))
    return argv


@settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(extra=train_argv())
def test_cli_train_flags_fuzz(cli_env, tmp_path_factory, extra, capsys, monkeypatch):
    from ltuning.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path_factory.mktemp("run")
    monkeypatch.chdir(work)
    out = work / "out"
    argv = ["train", "--model", cli_env["model"], "--train-file", cli_env["train"], "--validation-file",
            cli_env["valid"], "--text-column", "text", "--label-column", "label", "--max-steps", "2",
            "--batch-size", "4", "--output-dir", str(out), "--quiet", *extra]
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        rc = e.code
        assert rc in (0, 2)
        assert not out.exists()
        CASES["cli", "usage" if rc == 2 else "help"] += 1
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err
    CASES["cli", "trained" if rc == 0 else "error"] += 1
    if rc == 0:
        assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    else:
        lines = [s for s in err.splitlines() if s.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not (out / "adapter_model.safetensors").exists()
    # never a half-written file
    assert not [p for p in work.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


# what each fuzz test above counts in CASES; a case that passes ends in one of these
OUTCOMES = {"readers": {"read", "error"}, "label_texts": {"read", "error"}, "adapter": {"loaded", "error"},
            "cli": {"trained", "error", "usage"}}


def test_zz_each_fuzz_test_reached_every_outcome(capsys):
    """A fuzz test passes when each case ends in a clear error or a documented behaviour, so it only checks
    something when both happen: a reader that refused every file, a loader that refused every adapter or a
    CLI that never trained would pass it. Each fuzz test that ran must have reached each of its outcomes
    (they run before this one in file order; run the whole file). Also prints the counts."""
    with capsys.disabled():
        print(f"\nfuzz cases tried: {dict(CASES)}; total {sum(CASES.values())}")
    ran = {test for test, _ in CASES}
    if not ran:
        pytest.skip("no fuzz test ran before this one (run the whole file)")
    for test in sorted(ran):
        reached = {outcome for t, outcome in CASES if t == test}
        assert OUTCOMES[test] <= reached, (test, dict(CASES))
    assert issubclass(AdapterError, LTuningError) and issubclass(DataError, LTuningError)
