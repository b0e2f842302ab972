"""Checkpoints and resume: a run killed with SIGKILL (mid-step, and mid-checkpoint-write) continues from its
latest checkpoint and ends with the same adapter, bit for bit, as a run that was never interrupted. Also:
pruning, option mismatches, and non-finite losses (stop with the last good checkpoint intact, or skip)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import TRAIN, VALID, save_tiny_bert, write_csv

from ltuning.adapter import WEIGHTS_NAME
from ltuning.checkpoint import list_checkpoints, load_checkpoint
from ltuning.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"model": str(save_tiny_bert(root / "tiny-bert")),
            "train": str(write_csv(root / "train.csv", TRAIN)),
            "valid": str(write_csv(root / "valid.csv", VALID))}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def args_for(setup, out, *extra):
    # lt-prompt learns visibly on the tiny model (its weights move every step), so equality is meaningful
    return ["train", "--model", setup["model"], "--train-file", setup["train"], "--validation-file", setup["valid"],
            "--text-column", "text", "--label-column", "label", "--method", "lt-prompt", "--max-steps", "12",
            "--batch-size", "4", "--eval-every", "4", "--checkpoint-every", "3", "--keep-checkpoints", "2",
            "--learning-rate", "0.05", "--output-dir", str(out), "--quiet", *extra]


KILLER = textwrap.dedent("""
    import os, signal, sys
    import ltuning.checkpoint as ck
    import ltuning.pairs as pairs
    mode, at = sys.argv[1], int(sys.argv[2])
    if mode == "step":  # SIGKILL in the middle of a training step: the at-th batch drawn
        calls = [0]
        orig = pairs.PairSampler.next
        def next_(self):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self)
        pairs.PairSampler.next = next_
    elif mode == "finish":  # SIGKILL after the loop, before the run is finished (every checkpoint written)
        import ltuning.train as tr
        def finish(self):
            os.kill(os.getpid(), signal.SIGKILL)
        tr._TrainingLoop._finish = finish
    else:  # SIGKILL with checkpoint step-<at> fully written under its temporary name, before the rename
        orig_rename = ck.os.rename
        def rename(src, dst):
            if str(dst).endswith(f"step-{at}"):
                os.kill(os.getpid(), signal.SIGKILL)
            return orig_rename(src, dst)
        ck.os.rename = rename
    from ltuning.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def run_killed(mode: str, at: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", KILLER, mode, str(at), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def steps(out: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(out)]


def test_sigkill_then_resume_is_bit_exact(setup, tmp_path):
    ref = tmp_path / "ref"
    assert main(args_for(setup, ref)) == 0
    # keep 2 newest (9, 12) + the one at the best validation step (evaluated at 4, 8, 12; saved at 3, 6, 9, 12)
    ref_results = json.loads((ref / "train_results.json").read_text())
    best = ref_results["best_step"]
    assert set(steps(ref)) == {9, 12} | ({best} if best % 3 == 0 else set())

    out = tmp_path / "killed"
    # 1) killed while drawing the 8th batch (step 8): step-3 and step-6 are on disk, no adapter
    p = run_killed("step", 8, args_for(setup, out), tmp_path)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert steps(out) == [3, 6]
    assert not (out / WEIGHTS_NAME).exists()
    # 2) resumed, then killed between writing step-9 and renaming it: step-9 does not count
    p = run_killed("rename", 9, args_for(setup, out, "--resume"), tmp_path)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert "resumed from" in p.stdout and "step-6" in p.stdout
    assert steps(out) == [3, 6] and (out / "checkpoints" / ".tmp-step-9").is_dir()
    # 3) resumed again from step-6, runs to the end
    assert main(args_for(setup, out, "--resume")) == 0
    assert not list((out / "checkpoints").glob(".tmp-*"))

    a, b = load_file(str(ref / WEIGHTS_NAME)), load_file(str(out / WEIGHTS_NAME))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the weights at the last step too (the adapter holds the best step's, which may precede the kill)
    a, b = (load_file(str(d / "checkpoints" / "step-12" / "adapter_model.safetensors")) for d in (ref, out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    got = json.loads((out / "train_results.json").read_text())
    assert got["resumed_from_step"] == 6
    assert got["best_step"] == ref_results["best_step"]
    assert [r["loss"] for r in got["train_log"]] == [r["loss"] for r in ref_results["train_log"]]
    assert [(r["step"], r["accuracy"], r["loss"]) for r in got["history"]] == \
        [(r["step"], r["accuracy"], r["loss"]) for r in ref_results["history"]]
    assert steps(out) == steps(ref)


def test_resume_from_the_checkpoint_that_stopped_early_ends_there(setup, tmp_path):
    # early stopping spends its patience at an evaluation with a checkpoint; the process dies before it finishes.
    # The resumed run must end at that step as the unbroken run did: no extra training step, same record.
    extra = ["--max-steps", "60", "--checkpoint-every", "4", "--early-stopping-patience", "1"]
    ref = tmp_path / "ref"
    assert main(args_for(setup, ref, *extra)) == 0
    ref_results = json.loads((ref / "train_results.json").read_text())
    stop = ref_results["stopped_early_at"]
    assert stop is not None and stop < 60 and stop % 4 == 0

    out = tmp_path / "killed"
    p = run_killed("finish", 0, args_for(setup, out, *extra), tmp_path)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert steps(out)[-1] == stop and not (out / WEIGHTS_NAME).exists()
    assert main(args_for(setup, out, *extra, "--resume")) == 0
    got = json.loads((out / "train_results.json").read_text())
    assert got["resumed_from_step"] == stop
    assert got["stopped_early_at"] == stop and got["best_step"] == ref_results["best_step"]
    assert [r["step"] for r in got["train_log"]] == [r["step"] for r in ref_results["train_log"]]
    a, b = load_file(str(ref / WEIGHTS_NAME)), load_file(str(out / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_contents_load_weights_only(setup, tmp_path):
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    ck = load_checkpoint(out / "checkpoints" / "step-3")
    ts = ck["trainer_state"]
    assert ts["step"] == 3 and ts["sampler"]["position"] > 0 and len(ts["train_log"]) == 3
    assert ck["optimizer"]["state"] and ck["scheduler"]["last_epoch"] == 3
    assert set(ck["weights"]) == set(load_file(str(out / WEIGHTS_NAME)))
    # the optimizer file is plain tensors and numbers: refusing pickled objects still loads it
    torch.load(out / "checkpoints" / "step-3" / "optimizer.pt", weights_only=True)


def test_resume_with_other_options_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    capsys.readouterr()
    assert main(args_for(setup, out, "--max-steps", "3", "--batch-size", "6", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot resume") and "batch_size" in err[0]


def test_resume_without_checkpoint_starts_from_scratch(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "2", "--resume")) == 0
    assert "no checkpoint" in capsys.readouterr().out
    assert json.loads((out / "train_results.json").read_text())["resumed_from_step"] == 0


def test_corrupt_checkpoint_is_a_clear_error(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    (out / "checkpoints" / "step-3" / "optimizer.pt").write_bytes(b"\x80\x04 not a checkpoint")
    capsys.readouterr()
    assert main(args_for(setup, out, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer.pt" in err[0], err


@pytest.fixture
def nan_at(monkeypatch):
    """Make the training loss NaN at the given optimizer steps (counted by calls to the loss)."""
    from ltuning.model import LTuningModel

    def install(bad_steps: set[int]):
        orig = LTuningModel.loss
        calls = [0]

        def loss(self, *a, **k):
            calls[0] += 1
            value = orig(self, *a, **k)
            return value * float("nan") if calls[0] in bad_steps else value

        monkeypatch.setattr(LTuningModel, "loss", loss)
    return install


def test_nan_loss_stops_with_last_good_checkpoint(setup, tmp_path, capsys, nan_at):
    out = tmp_path / "out"
    nan_at({5})
    assert main(args_for(setup, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "non-finite training loss nan at step 5" in err[0] and "step-3" in err[0] and "--resume" in err[0]
    assert steps(out) == [3]
    assert load_checkpoint(out / "checkpoints" / "step-3")["trainer_state"]["step"] == 3
    assert not (out / WEIGHTS_NAME).exists()


def test_nan_loss_skipped_with_flag(setup, tmp_path, nan_at):
    out = tmp_path / "out"
    nan_at({2, 7})
    assert main(args_for(setup, out, "--skip-nonfinite")) == 0
    results = json.loads((out / "train_results.json").read_text())
    assert results["skipped_steps"] == [2, 7]
    assert [r["step"] for r in results["train_log"] if r.get("skipped")] == [2, 7]
    assert all(torch.isfinite(v).all() for v in load_file(str(out / WEIGHTS_NAME)).values())


def test_nan_step_leaves_weights_untouched(nan_at, monkeypatch):
    """API level: the NaN step raises before the optimizer applies it."""
    from conftest import tiny_bert

    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.data import TextDataset
    from ltuning.model import LTuningModel
    from ltuning.train import NonFiniteLossError, TrainArgs, train

    m, tok = tiny_bert()
    model = LTuningModel(Backbone(m, tok, "tiny"), LTuningConfig(method="lt-prompt", label_names=["negative", "positive"]))
    data = TextDataset([t for t, _ in TRAIN], [int(y == "positive") for _, y in TRAIN], ["negative", "positive"])
    snapshots = []
    orig_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        out = orig_step(self, *a, **k)
        snapshots.append({k: v.clone() for k, v in model.method.state_dict().items()})
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    nan_at({3})
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(model, data, None, TrainArgs(max_steps=5, batch_size=4, progress=False))
    assert len(snapshots) == 2  # steps 1 and 2
    for k, v in model.method.state_dict().items():
        assert torch.equal(v, snapshots[-1][k])


def test_api_train_logs_each_steps_rate_and_keeps_runs_apart(tmp_path, nan_at):
    """train_log's lr is the rate the step used (warmup 2 of 5 steps at 1e-3: 0.5, 1, then linear decay to
    1/3), not the next step's; a fresh train() refuses a folder holding another run's checkpoints, whose
    pruning would otherwise take this run's and a later resume the other's."""
    from conftest import tiny_bert

    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.data import TextDataset
    from ltuning.errors import ConfigError
    from ltuning.model import LTuningModel
    from ltuning.train import TrainArgs, train

    m, tok = tiny_bert()
    model = LTuningModel(Backbone(m, tok, "tiny"), LTuningConfig(method="prompt", label_names=["negative", "positive"]))
    data = TextDataset([t for t, _ in TRAIN], [int(y == "positive") for _, y in TRAIN], ["negative", "positive"])
    args = TrainArgs(max_steps=5, batch_size=4, learning_rate=1e-3, warmup_ratio=0.4, progress=False,
                     output_dir=str(tmp_path), checkpoint_every=2)
    result = train(model, data, None, args)
    assert [r["lr"] for r in result.train_log] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    nan_at({4})  # a skipped step records its own rate too
    skipped = train(model, data, None, TrainArgs(max_steps=5, batch_size=4, learning_rate=1e-3, warmup_ratio=0.4,
                                                 progress=False, skip_nonfinite=True))
    assert [r["lr"] for r in skipped.train_log] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    assert [r["step"] for r in skipped.train_log if r.get("skipped")] == [4]
    with pytest.raises(ConfigError, match=r"holds checkpoints of another run \(up to step-4\); give resume=True"):
        train(model, data, None, TrainArgs(max_steps=3, batch_size=4, seed=1, progress=False,
                                           output_dir=str(tmp_path), checkpoint_every=1))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]


def test_resume_with_other_text_pooling_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3", "--text-pooling", "cls")) == 0
    capsys.readouterr()
    assert main(args_for(setup, out, "--max-steps", "3", "--text-pooling", "mean", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and "text_pooling" in err


def test_resume_with_another_label_map_is_refused_by_name(setup, tmp_path, capsys):
    out = tmp_path / "out"
    lt_prefix = ("--method", "lt-prefix", "--max-steps", "3")  # the label map is lt-prefix's
    assert main(args_for(setup, out, *lt_prefix, "--label-map-rank", "2")) == 0
    capsys.readouterr()
    assert main(args_for(setup, out, *lt_prefix, "--label-map-rank", "0", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and "label_map_rank: checkpoint 2, now 0" in err
    assert main(args_for(setup, out, *lt_prefix, "--resume")) == 2  # the default rank, 8
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and "label_map_rank: checkpoint 2, now 8" in err


def test_resuming_a_run_without_a_label_map_names_the_flag(setup, tmp_path, capsys):
    """A run written without a map (as before the map was lt-prefix's default) resumes with --label-map-rank 0;
    without it the error says so."""
    out = tmp_path / "out"
    lt_prefix = ("--method", "lt-prefix", "--max-steps", "3", "--label-map-rank", "0")
    assert main(args_for(setup, out, *lt_prefix)) == 0
    capsys.readouterr()
    assert main(args_for(setup, out, "--method", "lt-prefix", "--max-steps", "3", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert "label_map_rank: checkpoint 0, now 8" in err and "pass --label-map-rank 0" in err
    assert main(args_for(setup, out, "--method", "lt-prefix", "--max-steps", "3", "--label-map-rank", "0",
                         "--resume")) == 0


def _scaled_weights(run, factor, shift=0.0):
    run["backbone_weights"] = [x * factor + shift for x in run["backbone_weights"]]


@pytest.mark.parametrize("edit, refused", [
    (None, None),
    # a sample of the backbone's weights: other weights of the same shape are refused, the same weights within
    # the rounding of another dtype resume
    (lambda run: _scaled_weights(run, 1.5, 0.1), "other backbone weights"),
    (lambda run: _scaled_weights(run, 1.001), None),
    # its config settings: one that differs (the activation) is refused; a checkpoint without the record, or
    # with a key this backbone does not have, resumes
    (lambda run: run.pop("backbone_settings"), None),
    (lambda run: run["backbone_settings"].update(rope_theta=1.0), None),
    (lambda run: run["backbone_settings"].update(hidden_act="relu"), "hidden_act: trained 'relu', now 'gelu'"),
])
def test_resume_compares_the_recorded_backbone(setup, tmp_path, capsys, edit, refused):
    """A checkpoint records its backbone (weights sample, config settings); resuming on another is refused."""
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    for _, folder in list_checkpoints(out):
        state_file = Path(folder) / "trainer_state.json"
        state = json.loads(state_file.read_text())
        assert len(state["run"]["backbone_weights"]) > 0 and state["run"]["backbone_settings"]["hidden_act"] == "gelu"
        if edit is not None:
            edit(state["run"])
        state_file.write_text(json.dumps(state))
    capsys.readouterr()
    rc = main(args_for(setup, out, "--max-steps", "3", "--resume"))
    err = capsys.readouterr().err.strip().splitlines()
    assert (rc == 0) == (refused is None), err
    if refused is not None:
        assert len(err) == 1 and err[0].startswith("error: cannot resume") and refused in err[0]


def test_resume_mismatch_shows_the_default_of_an_unrecorded_option(setup, tmp_path, capsys):
    """metric_for_best / objective are recorded only when not their default: a mismatch names both sides."""
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    capsys.readouterr()
    assert main(args_for(setup, out, "--max-steps", "3", "--metric-for-best", "mcc", "--resume")) == 2
    err = capsys.readouterr().err
    assert "metric_for_best: checkpoint 'accuracy', now 'mcc'" in err, err
    # a checkpoint of a pairwise LT run (the default objective before listwise) resumes only with pairwise
    pairwise = tmp_path / "pairwise"
    assert main(args_for(setup, pairwise, "--max-steps", "3", "--objective", "pairwise")) == 0
    for _, folder in list_checkpoints(pairwise):  # as written before the key: pairwise was not recorded
        state_file = Path(folder) / "trainer_state.json"
        state = json.loads(state_file.read_text())
        assert "objective" not in state["run"]
    capsys.readouterr()
    assert main(args_for(setup, pairwise, "--max-steps", "3", "--resume")) == 2
    err = capsys.readouterr().err
    assert "objective: checkpoint 'pairwise', now 'listwise'" in err and "resumes with --objective pairwise" in err, err
    assert main(args_for(setup, pairwise, "--max-steps", "3", "--objective", "pairwise", "--resume")) == 0


def test_resume_without_the_checkpoints_learning_rate_names_it(setup, tmp_path, capsys):
    """A run begun at 1e-2 (lt-prefix's default before it became 3e-3) and resumed without --learning-rate is
    refused, naming the flag and value that continue it; with them it resumes."""
    def lt_prefix(*extra):
        argv = args_for(setup, tmp_path / "out", "--max-steps", "3", "--method", "lt-prefix", *extra)
        at = argv.index("--learning-rate")
        return argv[:at] + argv[at + 2:]

    assert main(lt_prefix("--learning-rate", "0.01")) == 0
    capsys.readouterr()
    assert main(lt_prefix("--resume")) == 2
    err = capsys.readouterr().err
    assert "learning_rate: checkpoint 0.01, now 0.003" in err and "pass --learning-rate 0.01" in err, err
    assert main(lt_prefix("--learning-rate", "0.01", "--resume")) == 0


@pytest.mark.parametrize("again, ok", [((), True), (("--text-pooling", "pooler"), True),
                                       (("--text-pooling", "cls"), False)])
def test_checkpoint_without_text_pooling_means_autos_old_rule(setup, tmp_path, capsys, again, ok):
    """Checkpoints written before the signature held text_pooling were trained with 'auto' under its old
    rule (the pooler, on this BERT): they resume with that, and not with another pooling."""
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    for _, folder in list_checkpoints(out):
        state_file = Path(folder) / "trainer_state.json"
        state = json.loads(state_file.read_text())
        assert state["run"]["text_pooling"] == "pooler"
        del state["run"]["text_pooling"]
        state_file.write_text(json.dumps(state))
    capsys.readouterr()
    rc = main(args_for(setup, out, "--max-steps", "3", *again, "--resume"))
    err = capsys.readouterr().err
    assert (rc == 0) == ok, err
    if not ok:
        assert "text_pooling" in err


# ---------------------------------------------------------------------- Ctrl-C
SHORT = ("--max-steps", "4")


def test_ctrl_c_names_the_last_checkpoint_and_resume_continues(setup, tmp_path, capsys, monkeypatch):
    import ltuning.checkpoint as ckpt

    real = ckpt.save_checkpoint

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "run"
    assert main(args_for(setup, out, *SHORT, "--checkpoint-every", "1")) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted; last checkpoint: {out / 'checkpoints' / 'step-1'}; continue with the same " \
                  "command and --resume"
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    assert main(args_for(setup, out, *SHORT, "--checkpoint-every", "1", "--resume")) == 0


def test_ctrl_c_before_any_checkpoint_says_nothing_was_saved(setup, tmp_path, capsys, monkeypatch):
    import ltuning.train

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ltuning.train, "train", interrupt)
    assert main(args_for(setup, tmp_path / "run", *SHORT)) == 130
    assert capsys.readouterr().err.strip() == "interrupted; nothing was saved"


# ------------------------------------------------------------------- no adapter with NaN weights, strict JSON
def nonfinite_args(setup, out, *extra, validation=True):
    return ["train", "--model", setup["model"], "--train-file", setup["train"],
            *(["--validation-file", setup["valid"]] if validation else []), "--text-column", "text",
            "--label-column", "label", "--method", "lt-prompt", "--max-steps", "6", "--batch-size", "4",
            "--eval-every", "2", "--output-dir", str(out), "--quiet", *extra]


@pytest.mark.parametrize("validation", [True, False])
def test_huge_learning_rate_with_skip_nonfinite_saves_no_nan_adapter(setup, tmp_path, capsys, validation):
    out = tmp_path / "out"
    rc = main(nonfinite_args(setup, out, "--learning-rate", "1e30", "--skip-nonfinite", "--checkpoint-every", "2",
                              validation=validation))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert "no adapter is saved" in err[0] and "--learning-rate" in err[0]
    if validation:
        assert "no evaluation had a finite validation loss" in err[0]
    assert not (out / "adapter_model.safetensors").exists() and not (out / "train_results.json").exists()
    # the checkpoints written on the way are strict JSON (a NaN validation loss is null)
    for state in out.glob("checkpoints/step-*/trainer_state.json"):
        text = state.read_text()
        assert "NaN" not in text and "Infinity" not in text, state
        ts = json.loads(text)
        if validation:
            assert any(r["loss"] is None and r.get("nonfinite") for r in ts["history"])


def test_nan_evaluation_is_never_the_best(setup, tmp_path, monkeypatch):
    """One evaluation with a NaN loss among finite ones: recorded as null, never kept; the rest train on."""
    import ltuning.train as train_mod

    orig = train_mod.evaluate
    calls = [0]

    def evaluate(*a, **k):
        calls[0] += 1
        m = orig(*a, **k)
        if calls[0] == 2:  # step 4: a NaN loss with the best accuracy there could be
            m = {**m, "loss": float("nan"), "accuracy": 1.0}
        return m

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    out = tmp_path / "out"
    assert main(nonfinite_args(setup, out)) == 0
    text = (out / "train_results.json").read_text()
    assert "NaN" not in text
    res = json.loads(text)
    assert res["best_step"] != 4 and res["best_metrics"]["loss"] is not None
    assert [r["loss"] is None for r in res["history"]] == [False, True, False]


def test_history_jsonl_and_result_dict_are_strict_json():
    from ltuning.train import TrainResult, history_jsonl

    r = TrainResult(best_step=2, best_metrics={"loss": 0.5},
                    history=[{"step": 2, "loss": float("nan"), "train_loss": float("inf")}])
    assert json.loads(history_jsonl(r)) == {"step": 2, "loss": None, "train_loss": None}
    json.dumps(r.to_dict(), allow_nan=False)


@pytest.mark.parametrize("change, key", [
    (("--label-texts", "awful,fine"), "label_texts"),
    (("--max-length", "20"), "max_length"),
    (("--train-file", "SWAPPED"), "train_data"),  # the same size, one label changed
    (("--validation-file", "SWAPPED"), "validation_data"),
])
def test_resume_on_other_label_texts_length_or_data_is_refused(setup, tmp_path, capsys, change, key):
    """The label texts, the text length and the data (by content, not only size) are part of the run."""
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "3")) == 0
    capsys.readouterr()
    if change[1] == "SWAPPED":
        rows = TRAIN if key == "train_data" else VALID
        swapped = [(rows[0][0], "negative" if rows[0][1] == "positive" else "positive"), *rows[1:]]
        change = (change[0], str(write_csv(tmp_path / "swapped.csv", swapped)))
    assert main(args_for(setup, out, "--max-steps", "3", *change, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and f"{key}: checkpoint" in err, err
    if key.endswith("_data"):
        assert "resume with the same data" in err


def test_checkpoint_written_before_the_data_keys_resumes(setup, tmp_path, capsys):
    """A checkpoint without the label-text, length and data records (written before them) resumes as before."""
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "6", "--max-length", "20")) == 0
    for _, folder in list_checkpoints(out):
        state_file = Path(folder) / "trainer_state.json"
        state = json.loads(state_file.read_text())
        for k in ("label_texts", "label_length", "max_length", "train_data", "validation_data"):
            assert k in state["run"]
            del state["run"][k]
        state_file.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(args_for(setup, out, "--max-steps", "6", "--label-texts", "awful,fine", "--resume")) == 0


def test_checkpoint_recording_an_unused_prefix_pooling_resumes(setup, tmp_path, capsys):
    """Before other methods refused --prefix-pooling, an lt-prompt run could record 'softmax' (unused): its
    checkpoints resume without the flag, which is refused now."""
    out = tmp_path / "out"
    assert main(args_for(setup, out, "--max-steps", "6")) == 0
    for _, folder in list_checkpoints(out):
        state_file = Path(folder) / "trainer_state.json"
        state = json.loads(state_file.read_text())
        state["run"]["prefix_pooling"] = "softmax"
        state_file.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(args_for(setup, out, "--max-steps", "6", "--resume")) == 0
