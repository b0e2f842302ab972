"""Hostile arguments to the public Python API, as tests/test_fuzz.py does for the CLI's inputs.

Every public entry point (``ENTRIES``) is called with each argument (``ARGS``) set, one at a time, to each value
of ``HOSTILE`` (None, numbers, NaN, bools, bytes, a lone surrogate as ``surrogateescape`` produces, empty and
nested lists, a dict, an object, the other config class). Every call must raise a ``TypeError`` or
``ValueError`` (ltuning's errors are ``ValueError`` subclasses) raised by ltuning's own code, whose message names
the argument -- never an ``AttributeError`` / ``IndexError`` / ``KeyError`` / ``RuntimeError`` /
``UnicodeError`` from inside transformers, tokenizers or torch, and never a silent success. A value that is
valid for an argument (an empty list of texts returns []) is listed in ``VALID`` with the reason and not run as a
hostile case. ``EXPECTED_COUNTS`` pins the number of cases per entry point, so the fuzzing cannot shrink
unnoticed; ``test_case_counts`` prints one line per entry point (``pytest -s`` / ``-rA``).
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_tokenizer

import ltuning
from ltuning import LTuningConfig, LTuningModel, build_and_train, get_ltuning_model
from ltuning.adapter import load_adapter
from ltuning.data import TextDataset
from ltuning.train import TrainArgs, train

SRC = str(Path(ltuning.__file__).resolve().parent)


class _Obj:
    def __repr__(self) -> str:
        return "object()"


#: name -> value; the config classes stand for "a config of the wrong type" wherever the other is expected
HOSTILE = {
    "None": None, "0": 0, "-1": -1, "1.5": 1.5, "nan": math.nan, "True": True, "bytes": b"bytes",
    "surrogate": "\udcff", "empty str": "", "empty list": [], "nested list": [["a", ["b"]]], "[None]": [None],
    "dict": {"a": 1}, "object": _Obj(), "TrainArgs": TrainArgs(), "LTuningConfig": LTuningConfig(),
    "[text, bytes]": ["a good film", b"bytes"], "[text, surrogate]": ["a good film", "\udcff"],
}

LABELS = ["neg", "pos"]
TEXTS = ["a good film", "a bad film", "it was fun", "boring plot"]


def _data() -> TextDataset:
    return TextDataset(list(TEXTS), [1, 0, 1, 0], list(LABELS))


def _train_args(**kw) -> TrainArgs:
    return TrainArgs(**{"max_steps": 1, "batch_size": 2, "eval_every": 1, "progress": False, **kw})


def _config(**kw) -> LTuningConfig:
    return LTuningConfig(**{"label_names": list(LABELS), **kw})


# entry point -> (its arguments, call(ctx, argument, value))
def _config_call(ctx, arg, v):  # construction, then a model on it (the method and backbone checks run there)
    LTuningModel(ctx["backbone"], _config(**{arg: v}))


def _get_model(ctx, arg, v):
    kw = {"model": ctx["bert"], "config": _config(), "labels": list(LABELS), "tokenizer": ctx["tokenizer"], arg: v}
    get_ltuning_model(**kw)


def _predict(ctx, arg, v):
    ctx["model"].predict(**{"texts": list(TEXTS), arg: v})


def _predict_proba(ctx, arg, v):
    ctx["model"].predict_proba(**{"texts": list(TEXTS), arg: v})


def _call(ctx, arg, v):
    if arg == "texts":
        ctx["model"](v)
    else:
        ctx["model"](list(TEXTS), **{arg: v})


def _score_texts(ctx, arg, v):
    ctx["model"].score_texts(**{"texts": list(TEXTS), arg: v})


# a relative folder name (the surrogate) is taken inside the test's temporary folder, never the working tree
def _save(ctx, arg, v):
    kw = {"directory": ctx["tmp"] / f"save-{ctx['n']}", arg: v}
    ctx["n"] += 1
    with contextlib.chdir(ctx["tmp"]):
        ctx["model"].save_pretrained(**kw)


def _from_pretrained(ctx, arg, v):
    with contextlib.chdir(ctx["tmp"]):
        LTuningModel.from_pretrained(**{"directory": ctx["adapter"], "model": ctx["backbone"], arg: v})


def _load_adapter(ctx, arg, v):
    with contextlib.chdir(ctx["tmp"]):
        load_adapter(**{"directory": ctx["adapter"], "backbone": ctx["backbone"], arg: v})


def _train_args_call(ctx, arg, v):
    _train_args(**{arg: v})


def _train(ctx, arg, v):
    kw = {"model": ctx["model"], "train_data": _data(), "validation_data": _data(), "args": _train_args(), arg: v}
    train(**kw)


def _build_and_train(ctx, arg, v):
    kw = {"backbone": ctx["backbone"], "train_data": _data(), "validation_data": _data(), "args": _train_args(),
          "say": None, arg: v}
    build_and_train(**kw)


def _text_dataset(ctx, arg, v):
    TextDataset(**{"texts": list(TEXTS), "labels": [1, 0, 1, 0], "label_names": list(LABELS), arg: v})


def _pipeline(ctx, arg, v):
    ltuning.pipeline(**{"adapter": ctx["model"], arg: v})


CONFIG_FIELDS = ["method", "base_model", "label_names", "label_texts", "label_length", "max_length", "prefix_pooling",
                 "text_pooling", "label_position", "score_head", "prefix_layers", "label_map_rank", "text_pairs", "objective", "backbone_fingerprint",
                 "backbone_weights", "tasks"]
TRAIN_FIELDS = ["max_steps", "batch_size", "learning_rate", "weight_decay", "warmup_ratio", "eval_every",
                "eval_batch_size", "seed", "mixed_precision", "progress", "gradient_accumulation_steps", "output_dir",
                "checkpoint_every", "keep_checkpoints", "resume", "skip_nonfinite", "metric_for_best",
                "early_stopping_patience", "objective"]

ENTRIES = {
    "LTuningConfig": (CONFIG_FIELDS, _config_call),
    "get_ltuning_model": (["model", "config", "labels", "tokenizer"], _get_model),
    "predict": (["texts", "batch_size", "candidate_labels", "hypothesis_template", "multi_label", "threshold",
                 "return_scores"], _predict),
    "predict_proba": (["texts", "batch_size", "candidate_labels", "hypothesis_template", "multi_label"],
                      _predict_proba),
    "model(texts)": (["texts", "candidate_labels", "hypothesis_template", "multi_label", "batch_size"], _call),
    "score_texts": (["texts", "batch_size", "max_tokens"], _score_texts),
    "save_pretrained": (["directory", "overwrite"], _save),
    "from_pretrained": (["directory", "model", "tokenizer"], _from_pretrained),
    "load_adapter": (["directory", "backbone"], _load_adapter),
    "TrainArgs": (TRAIN_FIELDS, _train_args_call),
    "train": (["model", "train_data", "validation_data", "args"], _train),
    "build_and_train": (["backbone", "train_data", "validation_data", "args"], _build_and_train),
    "TextDataset": (["texts", "labels", "label_names"], _text_dataset),
    "pipeline": (["adapter", "batch_size"], _pipeline),
}

#: (entry point, argument, hostile value) -> why the value is valid there (not a hostile case)
VALID: dict[tuple[str, str, str], str] = {
    **{("LTuningConfig", f, "None"): "None: not set (the longest label / every layer / unknown / filled in by the model)"
       for f in ("label_length", "prefix_layers", "label_map_rank", "text_pairs", "objective", "backbone_fingerprint",
                 "backbone_weights", "tasks")},
    ("LTuningConfig", "score_head", "None"): "None: the method's own default head (Method.default_score_head)",
    ("LTuningConfig", "label_map_rank", "0"): "0: no label map (the paper's Z alone; None is lt-prefix's default, 8)",
    ("LTuningConfig", "text_pairs", "True"): "a model trained on (premise, hypothesis) pairs",
    ("LTuningConfig", "backbone_fingerprint", "empty str"): "not set, as None: the model fills in its backbone's (an "
                                                            "adapter saved with '' is refused as 'missing')",
    ("LTuningConfig", "label_texts", "empty list"): "no label texts: the label names are read",
    ("get_ltuning_model", "config", "None"): "the default LTuningConfig()",
    ("get_ltuning_model", "config", "LTuningConfig"): "a config (its labels come from labels=)",
    ("get_ltuning_model", "labels", "None"): "the config's own labels",
    ("get_ltuning_model", "tokenizer", "None"): "only needed for a model object not loaded from a folder",
    **{(e, "texts", "empty list"): "no texts: [] (an empty (0, K) array)"
       for e in ("predict", "predict_proba", "model(texts)", "score_texts")},
    **{(e, "candidate_labels", "None"): "the training labels" for e in ("predict", "predict_proba", "model(texts)")},
    **{(e, "hypothesis_template", "None"): "no template" for e in ("predict", "predict_proba", "model(texts)")},
    **{(e, "multi_label", "True"): "a sigmoid per label" for e in ("predict", "predict_proba", "model(texts)")},
    ("predict", "threshold", "0"): "a probability", ("predict", "threshold", "None"): "the default, 0.5",
    ("predict", "return_scores", "True"): "the pipeline's dicts",
    ("score_texts", "max_tokens", "None"): "the default token budget",
    ("save_pretrained", "overwrite", "True"): "replace files ltuning did not write",
    ("save_pretrained", "directory", "surrogate"): "how Python spells a file name that is not UTF-8 (os.fsdecode): "
                                                   "a valid folder name on POSIX",
    ("from_pretrained", "model", "None"): "the backbone the adapter names",
    ("from_pretrained", "tokenizer", "None"): "no tokenizer", ("load_adapter", "backbone", "None"): "base_model",
    **{("TrainArgs", f, "None"): "the default" for f in ("learning_rate", "output_dir")},
    **{("TrainArgs", f, v): "a valid value" for f, v in (
        ("progress", "True"), ("resume", "True"), ("skip_nonfinite", "True"), ("seed", "0"), ("weight_decay", "0"),
        ("warmup_ratio", "0"), ("checkpoint_every", "0"), ("early_stopping_patience", "0"), ("weight_decay", "1.5"),
        ("learning_rate", "1.5"), ("output_dir", "surrogate"))},
    **{(e, "validation_data", "None"): "training without validation" for e in ("train", "build_and_train")},
    **{(e, "args", "TrainArgs"): "the right type" for e in ("train", "build_and_train")},
    ("TextDataset", "texts", "empty list"): "an empty dataset (train refuses it by its size)",
    ("pipeline", "batch_size", "None"): "the pipeline's default",
}


def cases() -> list[tuple[str, str, str]]:
    return [(entry, arg, name) for entry, (args, _) in ENTRIES.items() for arg in args for name in HOSTILE
            if (entry, arg, name) not in VALID]


CASES = cases()
#: hostile cases per entry point (arguments x hostile values, less VALID); test_case_counts checks these
EXPECTED_COUNTS = {
    "LTuningConfig": 293, "get_ltuning_model": 68, "predict": 119, "predict_proba": 86, "model(texts)": 86,
    "score_texts": 52, "save_pretrained": 34, "from_pretrained": 52, "load_adapter": 35, "TrainArgs": 329, "train": 70,
    "build_and_train": 70, "TextDataset": 53, "pipeline": 35,
}  # 1383 in all


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    from ltuning.backbones import Backbone

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64))
    tokenizer = make_tokenizer("encoder")
    backbone = Backbone(bert, tokenizer, name="tiny-bert")
    model = LTuningModel(backbone, _config())
    tmp = tmp_path_factory.mktemp("api-fuzz")
    adapter = model.save_pretrained(tmp / "adapter")
    return {"bert": bert, "tokenizer": tokenizer, "backbone": backbone, "model": model, "tmp": tmp,
            "adapter": adapter, "n": 0}


def _raised_by_ltuning(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(SRC)


#: other words a message may name an argument by (TrainArgs: its CLI flag, added below)
ALIASES = {"directory": ("adapter folder",)}


def _names(message: str, arg: str) -> bool:
    words = (arg, "--" + arg.replace("_", "-"), *ALIASES.get(arg, ()))
    return any(w in message for w in words)


@pytest.mark.parametrize("entry,arg,value", CASES, ids=["-".join(c) for c in CASES])
def test_hostile_argument(ctx, entry, arg, value):
    call = ENTRIES[entry][1]
    try:
        call(ctx, arg, HOSTILE[value])
    except (TypeError, ValueError) as e:
        assert not isinstance(e, UnicodeError), f"{type(e).__name__} from inside: {e}"
        assert _raised_by_ltuning(e), f"{type(e).__name__} not raised by ltuning: {e}"
        assert _names(str(e), arg), f"the message does not name {arg}: {e}"
    else:
        pytest.fail(f"{entry}({arg}={HOSTILE[value]!r}) was accepted")


def test_case_counts():
    counts = Counter(entry for entry, _, _ in CASES)
    for entry, (args, _) in ENTRIES.items():
        print(f"api fuzz: {entry}: {counts[entry]} hostile cases ({len(args)} arguments x {len(HOSTILE)} values, "
              f"{len(args) * len(HOSTILE) - counts[entry]} valid values excluded)")
    print(f"api fuzz: {sum(counts.values())} hostile cases over {len(ENTRIES)} entry points")
    assert dict(counts) == EXPECTED_COUNTS


@pytest.mark.parametrize("call", [
    lambda m: m.predict(["a good film", "bad \udcff film"]),
    lambda m: m.predict(("a good film", "\udcff")),
    lambda m: m.predict_proba([("a good film", "\udcff")]),
    lambda m: m(["\udcff"]),
    lambda m: m.score_texts(["a good film", "x\udcffy"]),
], ids=["predict", "predict-pair", "predict_proba-pairs", "call", "score_texts"])
def test_non_utf8_texts(ctx, call):
    """A str with lone surrogates (surrogateescape's spelling of bytes that are not UTF-8) is refused by name,
    with the bytes shown, before the tokenizer's TypeError."""
    from ltuning.errors import DataError

    with pytest.raises(DataError, match=r"texts: text \d is not UTF-8 text \(b'"):
        call(ctx["model"])


def test_a_lone_utf16_half_is_refused_by_name(ctx):
    """Half a UTF-16 pair (JSON from JavaScript can carry one) stands for no byte: it is shown escaped."""
    from ltuning.errors import ConfigError, DataError

    with pytest.raises(DataError, match=r"texts: text 1 is not UTF-8 text \('good \\ud83d'"):
        ctx["model"].predict(["a good film", "good \ud83d"])
    with pytest.raises(ConfigError, match="candidate_labels"):
        ctx["model"].predict(["a good film"], candidate_labels=["bad", "x\ud800"])


def test_bytes_texts(ctx):
    from ltuning.errors import DataError

    with pytest.raises(DataError, match="texts: text 0 is empty or not a string: b'a good film'; decode bytes"):
        ctx["model"].predict([b"a good film"])
