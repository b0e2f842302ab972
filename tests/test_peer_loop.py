"""The benchmark peers' training loop (benchmarks/peer_loop.py): a run stopped and started again from its
checkpoint is the run it would have been unbroken, and a checkpoint of another run is refused."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peer_loop  # noqa: E402
from conftest import tiny_bert  # noqa: E402

from ltuning.backbones import Backbone  # noqa: E402
from ltuning.data import TextDataset  # noqa: E402

TEXTS = ["the movie was good", "the film was bad", "loved the plot", "hated the actors", "a great story",
         "an awful film", "very fun", "very boring", "the actors were wonderful", "dull and terrible"]


class Stop(Exception):
    pass


def _data():
    train = TextDataset(TEXTS, [i % 2 for i in range(len(TEXTS))], ["neg", "pos"], "test")
    dev = TextDataset(TEXTS[:6], [1, 0, 1, 0, 1, 0], ["neg", "pos"], "test")
    return train, dev


def _run(method, bb, folder=None, stop_at=None, lr=1e-2, patience=0, model_path=None):
    train, dev = _data()

    def on_eval(row):
        if row["step"] == stop_at:
            raise Stop

    # train_peer seeds the global RNG from the seed: a resumed process must restore where the stopped run left it
    run = peer_loop.train_peer(method, bb, lambda: copy.deepcopy(bb), train, dev, num_labels=2, lr=lr, steps=8,
                               batch_size=4, eval_every=2, seed=0, text_pooling="mean", max_length=16,
                               patience=patience, on_eval=on_eval, checkpoint_dir=folder,
                               model_path=model_path)
    return run, run.predict(TEXTS)


def _curve(run):
    return [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in run.tracker.history]


@pytest.mark.parametrize("method", ["linear-probe", "full-finetune"])
def test_a_resumed_peer_run_is_the_unbroken_run(tmp_path, method):
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    whole, expected = _run(method, bb)
    with pytest.raises(Stop):
        _run(method, bb, tmp_path, stop_at=6)
    assert [s for s, _ in peer_loop.checkpoints(tmp_path)] == [4]  # the step-6 evaluation raised before saving
    resumed, got = _run(method, bb, tmp_path)
    assert resumed.resumed_from == 4 and whole.resumed_from == 0
    assert _curve(resumed) == _curve(whole)
    assert [r["step"] for r in whole.tracker.history] == [0, 2, 4, 6, 8]
    assert resumed.tracker.best_step == whole.tracker.best_step
    assert torch.equal(got, expected)
    assert [s for s, _ in peer_loop.checkpoints(tmp_path)] == [8]
    # a finished run's checkpoint gives the same run again without training
    again, got_again = _run(method, bb, tmp_path)
    assert again.resumed_from == 8 and _curve(again) == _curve(whole) and torch.equal(got_again, expected)


def test_an_early_stopped_run_resumes_as_stopped(tmp_path):
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    whole, expected = _run("linear-probe", bb, tmp_path, lr=0.0, patience=1)  # lr 0: no evaluation improves
    assert whole.stopped_early_at == 4
    again, got = _run("linear-probe", bb, tmp_path, lr=0.0, patience=1)
    assert again.stopped_early_at == 4 and again.resumed_from == 4
    assert _curve(again) == _curve(whole) and torch.equal(got, expected)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    with pytest.raises(Stop):
        _run("linear-probe", bb, tmp_path, stop_at=4)
    with pytest.raises(RuntimeError, match=r"another run \(it differs in lr\); delete .* to start this run again"):
        _run("linear-probe", bb, tmp_path, lr=3e-2)


def test_a_checkpoint_on_another_backbone_is_refused(tmp_path):
    """Same name, architecture and shapes, other weights (another seed): the weights sample tells them apart."""
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    torch.manual_seed(5)
    other = Backbone(*tiny_bert(), name="tiny-bert")
    assert other.fingerprint == bb.fingerprint
    with pytest.raises(Stop):
        _run("linear-probe", bb, tmp_path, stop_at=4)
    with pytest.raises(RuntimeError, match="it differs in backbone weights"):
        _run("linear-probe", other, tmp_path)
    with pytest.raises(RuntimeError, match="it differs in model_path"):
        _run("linear-probe", bb, tmp_path, model_path="/elsewhere")


def test_a_checkpoint_written_before_the_backbone_keys_resumes(tmp_path):
    """The first checkpoints (2026-11-30) have no backbone keys in their identity: they resume as written."""
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    whole, expected = _run("linear-probe", bb)
    with pytest.raises(Stop):
        _run("linear-probe", bb, tmp_path, stop_at=6)
    (_, path), = peer_loop.checkpoints(tmp_path)
    ck = torch.load(path, weights_only=True)
    for key in peer_loop._ADDED_LATER:
        del ck["identity"][key]
    del ck["backbone_weights"]
    torch.save(ck, path)
    resumed, got = _run("linear-probe", bb, tmp_path)
    assert resumed.resumed_from == 4 and _curve(resumed) == _curve(whole) and torch.equal(got, expected)
