"""ltuning.recipe (build a model for training and train it: the one recipe behind `ltuning train` and
benchmarks/table1.py) and the CLI's option table that --config reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_cli import TRAIN, VALID, _offline, files, models, train_args  # noqa: F401 - fixtures

from ltuning import TrainingRun, build_and_train, load_backbone
from ltuning.cli import build_parser, main
from ltuning.data import TextDataset, get_task
from ltuning.errors import ConfigError, DataError
from ltuning.evaluate import evaluate
from ltuning.recipe import default_label_texts, prepare_model
from ltuning.train import TrainArgs

NAMES = ["negative", "positive"]


def dataset(rows, names=NAMES) -> TextDataset:
    return TextDataset([t for t, _ in rows], [names.index(y) for _, y in rows], list(names))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from test_cli import save_tiny_bert

    return load_backbone(str(save_tiny_bert(tmp_path_factory.mktemp("recipe") / "tiny-bert")))


def test_default_label_texts():
    rte = get_task("rte")
    assert default_label_texts(rte.label_names, None, "rte") == ["entailment", "not entailment"]
    assert default_label_texts(rte.label_names, None, rte) == ["entailment", "not entailment"]
    assert default_label_texts(rte.label_names, ["yes", "no"], rte) == ["yes", "no"]
    assert default_label_texts(["a", "b"], None, rte) is None  # other labels: the names
    assert default_label_texts(["a", "b"], None, None) is None


def test_prepare_model_bounds_clamps_and_fills_in(backbone, capsys):
    with pytest.raises(ConfigError, match=r"--label-length must be in \[1, 64\] for tiny, got 65"):
        prepare_model(backbone, NAMES, label_length=65, base_model="tiny")
    model = prepare_model(backbone, ["entailment", "not_entailment"], task="rte", max_length=128)
    # the tiny BERT's 64 positions hold 64 - l text tokens beside the prefix
    assert model.config.max_length == model.text_max_length < 128
    assert "note: --max-length 128 is more than" in capsys.readouterr().out
    assert model.config.label_texts == ["entailment", "not entailment"]
    assert model.config.label_length is not None and model.config.backbone_fingerprint
    assert model.config.base_model == backbone.name
    assert prepare_model(backbone, NAMES, max_length=16, say=None).config.max_length == 16
    # the score head is for the label-conditioned methods; the classic ones are built with the paper's, and
    # another is refused (it would be recorded in the adapter and do nothing)
    assert prepare_model(backbone, NAMES, method="prefix").config.score_head.value == "paper"
    with pytest.raises(ConfigError, match="prefix scores the labels with its K-way head"):
        prepare_model(backbone, NAMES, method="prefix", score_head="similarity")
    with pytest.raises(ConfigError, match="prompt has none"):
        prepare_model(backbone, NAMES, method="prompt", prefix_pooling="softmax")
    assert prepare_model(backbone, NAMES, score_head="similarity").config.score_head.value == "similarity"


def test_build_and_train_on_a_loaded_backbone_and_by_name(backbone, models, tmp_path):  # noqa: F811
    args = TrainArgs(max_steps=4, batch_size=4, eval_every=2, progress=False)
    built, rows = [], []
    run = build_and_train(backbone, dataset(TRAIN), dataset(VALID), args, method="lt-prompt",
                          on_built=built.append, on_eval=rows.append, say=None)
    assert isinstance(run, TrainingRun) and built == [run.model] and [r["step"] for r in rows] == [2, 4]
    assert run.build_seconds >= 0 and run.result.best_step in (2, 4)
    summary = run.summary()
    assert list(summary) == ["learning_rate", "best_step", "best_metrics", "history", "train_log", "seconds",
                             "train_seconds", "trainable_parameters", "resumed_from_step", "skipped_steps",
                             "stopped_early_at"]
    assert summary["trainable_parameters"] == run.model.num_trainable_parameters()
    # seeded from args.seed before the model is built: the same run twice is the same model
    again = build_and_train(backbone, dataset(TRAIN), dataset(VALID), args, method="lt-prompt", say=None)
    for a, b in zip(run.model.method.state_dict().values(), again.model.method.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    by_name = build_and_train(models["tiny"], dataset(TRAIN), None, args, method="prefix", say=None)
    assert by_name.model.config.base_model == models["tiny"] and by_name.result.best_step == 4


def test_early_stopping_and_the_metric_that_chooses_the_best_state(backbone, monkeypatch):
    """--metric-for-best picks the kept state by MCC where accuracy disagrees; --early-stopping-patience 2
    ends the run two evaluations after the best one."""
    import ltuning.train as train_module

    script = iter([(0.5, 0.0), (0.8, 0.1), (0.6, 0.4), (0.7, 0.3), (0.7, 0.2), (0.9, 0.0), (0.9, 0.0)])

    def scripted(model, data, batch_size=64):
        acc, mcc = next(script)
        return {"accuracy": acc, "mcc": mcc, "macro_f1": acc, "loss": 1.0}

    monkeypatch.setattr(train_module, "evaluate", scripted)
    args = TrainArgs(max_steps=14, batch_size=4, eval_every=2, progress=False, metric_for_best="mcc",
                     early_stopping_patience=2)
    run = build_and_train(backbone, dataset(TRAIN), dataset(VALID), args, method="prefix", say=None)
    assert [r["step"] for r in run.result.history] == [2, 4, 6, 8, 10]
    assert run.result.best_step == 6 and run.result.best_metrics["mcc"] == 0.4
    assert run.result.stopped_early_at == 10 and run.summary()["stopped_early_at"] == 10
    with pytest.raises(ConfigError, match="metric-for-best"):
        TrainArgs(metric_for_best="f1")
    with pytest.raises(ConfigError, match="early-stopping-patience"):
        TrainArgs(early_stopping_patience=-1)


def test_early_stopping_and_metric_need_validation_data(backbone):
    """Without validation data there is nothing to stop on or choose by: refused, not silently ignored."""
    for kwargs, flags in (({"early_stopping_patience": 2}, "--early-stopping-patience need"),
                          ({"metric_for_best": "mcc"}, "--metric-for-best need"),
                          ({"early_stopping_patience": 1, "metric_for_best": "mcc"},
                           "--early-stopping-patience and --metric-for-best need")):
        args = TrainArgs(max_steps=2, batch_size=4, progress=False, **kwargs)
        with pytest.raises(ConfigError, match=flags):
            build_and_train(backbone, dataset(TRAIN), None, args, method="prefix", say=None)


def test_cli_says_how_many_steps_ran_when_stopped_early(models, files, tmp_path, capsys, monkeypatch):  # noqa: F811
    import ltuning.train as train_module

    real = train_module.evaluate  # the real metrics, made flat so that no evaluation after the first is better
    monkeypatch.setattr(train_module, "evaluate", lambda model, data, batch_size=64: {
        **real(model, data, batch_size), "accuracy": 0.5, "loss": 1.0})
    assert main(train_args(models, files, tmp_path / "run", "--max-steps", "12", "--early-stopping-patience",
                           "2")) == 0
    out = capsys.readouterr().out
    assert "trained 6 steps (stopped early, of --max-steps 12)" in out, out


def test_listwise_objective_is_cross_entropy_over_all_label_scores(backbone):
    """--objective listwise (the default): K-way cross-entropy over the K pair logits of each text (the scores
    prediction takes the argmax of); pairwise (A.3) is refused for classic methods, whose head is K-way."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = prepare_model(backbone, NAMES, method="lt-prefix", say=None)
    texts, labels = [t for t, _ in TRAIN[:4]], torch.tensor([NAMES.index(y) for _, y in TRAIN[:4]])
    batch = model.tokenize(texts)
    expected = F.cross_entropy(model.class_scores(batch), labels)
    assert torch.allclose(model.loss(batch, labels, objective="listwise"), expected)
    assert TrainArgs().objective == "listwise"  # the default
    args = TrainArgs(max_steps=4, batch_size=4, eval_every=2, progress=False)
    at_start = []  # an evaluation before the first step reports the objective's loss too

    def on_built(m):
        s = m.score_texts(dataset(VALID).texts)
        at_start.append((evaluate(m, dataset(VALID))["loss"],
                         F.cross_entropy(s, torch.tensor(dataset(VALID).labels)).item()))

    run = build_and_train(backbone, dataset(TRAIN), dataset(VALID), args, method="lt-prompt", say=None,
                          on_built=on_built)
    assert at_start[0][0] == pytest.approx(at_start[0][1], rel=1e-5)
    assert [r["step"] for r in run.result.history] == [2, 4]
    assert run.model.config.objective == "listwise"  # saved with the adapter
    # the validation loss is the training objective's: K-way cross-entropy, not the pair BCE
    scores = run.model.score_texts(dataset(VALID).texts)
    ce = F.cross_entropy(scores, torch.tensor(dataset(VALID).labels)).item()
    assert evaluate(run.model, dataset(VALID))["loss"] == pytest.approx(ce, rel=1e-5)
    # a classic method's head always trains the K-way softmax: listwise is its only objective
    assert build_and_train(backbone, dataset(TRAIN), None, args, method="prefix", say=None).model.config.objective \
        is None
    pairwise = TrainArgs(max_steps=4, batch_size=4, eval_every=2, progress=False, objective="pairwise")
    with pytest.raises(ConfigError, match="objective pairwise is for the label-conditioned"):
        build_and_train(backbone, dataset(TRAIN), dataset(VALID), pairwise, method="prefix", say=None)
    run = build_and_train(backbone, dataset(TRAIN), dataset(VALID), pairwise, method="lt-prompt", say=None)
    assert run.model.config.objective == "pairwise"
    with pytest.raises(ConfigError, match="--objective must be one of"):
        TrainArgs(objective="pointwise")


def test_multi_label_on_a_listwise_adapter_warns_that_scores_are_not_calibrated(backbone):
    import warnings

    model = prepare_model(backbone, NAMES, method="lt-prefix", say=None)
    model.config.objective = "listwise"
    with pytest.warns(UserWarning, match="listwise objective.*not calibrated.*--objective pairwise"):
        model.predict(["a fine film"], multi_label=True)
    for objective in ("pairwise", None):  # pairwise, or saved before the key (all pairwise then)
        model.config.objective = objective
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.predict(["a fine film"], multi_label=True)
    model.config.objective = "listwise"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(["a fine film"])  # single-label prediction ranks: nothing to warn about


def test_cli_train_results_come_from_the_recipe(models, files, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(train_args(models, files, out)) == 0
    results = json.loads((out / "train_results.json").read_text())
    assert list(results)[:2] == ["command", "args"]
    assert set(results) == {"command", "args", "learning_rate", "best_step", "best_metrics", "history",
                            "train_log", "seconds", "train_seconds", "trainable_parameters", "resumed_from_step",
                            "skipped_steps", "stopped_early_at", "adapter_weights_sha256"}


def test_table1_records_the_models_own_config(backbone, monkeypatch):
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    sys.modules.pop("table1", None)
    import common
    import table1

    monkeypatch.setitem(common.PROTOCOL, "tiny", {"steps": 2, "batch_size": 4, "eval_every": 2,
                                                  "learning_rate": 1e-2, "max_validation": None,
                                                  "text_pooling": "mean", "seeds": [0]})
    monkeypatch.setattr(table1, "load_task", lambda task, bb: (dataset(TRAIN), dataset(VALID)))
    out = table1.run_ours(backbone, "tiny", "sst2", "lt-prefix", 0)
    adapter = out["config"]["adapter"]
    assert adapter["label_length"] is not None and adapter["backbone_fingerprint"]
    assert adapter["text_pooling"] == "mean" and adapter["base_model"] == "tiny"
    # the recipe's max_length clamp: what the tiny BERT fits beside the prefix, not the protocol's 128
    assert adapter["max_length"] < common.MAX_LENGTH


@pytest.mark.parametrize("argv", [["train"], ["evaluate", "--adapter", "x"], ["predict", "--adapter", "x"],
                                  ["params"], ["report", "x"]])
def test_option_table_covers_every_option(argv):
    """--config reads each command's option table: every option argparse parses must be in it."""
    parser = build_parser()
    parsed = set(vars(parser.parse_args(argv))) - {"func", "command"}
    table = set(parser.commands[argv[0]].options) - {"help"}
    assert table == parsed


def test_validation_labels_are_checked_before_the_first_step(backbone, monkeypatch):
    """Validation data in another label order (or with other labels) is refused before any training step, for
    one task and for each task of a multi-task run; evaluation would refuse it only at its first evaluation."""
    import ltuning.train as training

    steps = []
    real = training._TrainingLoop._step
    monkeypatch.setattr(training._TrainingLoop, "_step", lambda self, step: steps.append(step) or real(self, step))
    rows = list(TRAIN[:8])
    train_ds, flipped = dataset(rows), dataset(rows, NAMES[::-1])
    other = TextDataset(list(flipped.texts), list(flipped.labels), ["bad", "good"])
    args = TrainArgs(max_steps=4, batch_size=2, eval_every=2, progress=False)
    for val in (flipped, other):
        with pytest.raises(DataError, match=r"the validation labels .* differ from the training labels"):
            build_and_train(backbone, train_ds, val, args, method="lt-prefix", say=None)
        with pytest.raises(DataError, match=r"task 'sent': the validation labels"):
            build_and_train(backbone, {"sent": train_ds}, {"sent": val}, args, method="lt-prefix", say=None)
    with pytest.raises(DataError, match="the validation labels"):
        build_and_train(backbone, train_ds, flipped, args, method="prefix", say=None)
    assert steps == []
    run = build_and_train(backbone, train_ds, dataset(rows), args, method="lt-prefix", say=None)  # same labels: trains
    assert steps == [1, 2, 3, 4] and run.result.best_metrics is not None


def test_benchmark_results_record_the_commit_their_process_started_on(monkeypatch):
    """A commit made while a run of hours is going is not the code the run ran: the benchmarks' result files
    record HEAD as it was when the process started (benchmarks/common.py imported), not when the file is written."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import subprocess

    import common

    at_start = dict(common._GIT_AT_START)  # taken at import, before any call: not a cache filled by the first one
    assert common.git_commit() == at_start
    moved = "f" * 40
    monkeypatch.setattr(common.subprocess, "run",  # HEAD moves on: what reading it now would give
                        lambda args, **kw: subprocess.CompletedProcess(args, 0, stdout=moved + "\n", stderr=""))
    assert common._git_state()["commit"] == moved
    later = common.git_commit()
    assert later == at_start and later["commit"] != moved
    later["commit"] = "edited"  # a caller's copy, not the record itself
    assert common.git_commit() == at_start
