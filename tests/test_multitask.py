"""Multi-task training (issue 13, part 3): one LT adapter, several tasks' label sets; each batch from one
task; the adapter saves every task's labels and predicts / evaluates with a task's labels by name."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from ltuning.backbones import Backbone
from ltuning.checkpoint import CheckpointError
from ltuning.config import LTuningConfig
from ltuning.data import TextDataset
from ltuning.errors import ConfigError, DataError
from ltuning.evaluate import evaluate
from ltuning.model import LTuningModel
from ltuning.pairs import TaskSampler
from ltuning.prediction import score_candidates
from ltuning.recipe import build_and_train, prepare_model
from ltuning.train import TrainArgs, train

SENT = ["neg", "pos"]
TOPIC = ["movie", "plot", "actors"]


def sentiment(n=12) -> TextDataset:
    rows = [("the movie was great fun", 1), ("boring and awful plot", 0), ("i loved it", 1), ("i hated it", 0)]
    rows = (rows * n)[:n]
    return TextDataset([t for t, _ in rows], [y for _, y in rows], list(SENT))


def topic(n=9) -> TextDataset:
    rows = [("the movie was a film", 0), ("the plot and story", 1), ("the actors were good", 2)]
    rows = (rows * n)[:n]
    return TextDataset([t for t, _ in rows], [y for _, y in rows], list(TOPIC))


@pytest.fixture(scope="module")
def bb():
    torch.manual_seed(0)
    model, tok = TINY["bert"]()
    return Backbone(model, tok, name="tiny-bert")


def args(**kw) -> TrainArgs:
    return TrainArgs(**{"max_steps": 6, "batch_size": 4, "eval_every": 3, "progress": False, "seed": 3, **kw})


def weights(model):
    return {k: v.clone() for k, v in model.method.state_dict().items()}


def test_one_task_is_a_single_task_run(bb):
    single = build_and_train(bb, sentiment(), sentiment(4), args(), say=None)
    multi = build_and_train(bb, {"sent": sentiment()}, {"sent": sentiment(4)}, args(), say=None)
    a, b = weights(single.model), weights(multi.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert multi.model.config.tasks == {"sent": {"label_names": SENT, "label_texts": SENT}}
    assert multi.result.best_metrics["accuracy"] == single.result.best_metrics["accuracy"]


def test_each_batch_is_one_tasks(bb, monkeypatch):
    seen = []
    original = LTuningModel.loss

    def loss(self, batch, labels, *a, **kw):
        seen.append((tuple(self.label_names), int(labels.max()) < self.num_labels))
        return original(self, batch, labels, *a, **kw)

    monkeypatch.setattr(LTuningModel, "loss", loss)
    run = build_and_train(bb, {"sent": sentiment(12), "topic": topic(24)}, None, args(max_steps=12), say=None)
    expected = TaskSampler([sentiment(12).labels, topic(24).labels], [2, 3], 4, seed=3)
    tasks = [expected.task_of(i) for i in range(12)]
    counts = [(tuple(SENT), tasks.count(0)), (tuple(TOPIC), tasks.count(1))]
    assert [(n, sum(1 for s, _ in seen if s == n)) for n, _ in counts] == counts
    assert tasks.count(0) == 4 and tasks.count(1) == 8  # pinned for seed 3: sizes 12 and 24
    assert all(ok for _, ok in seen)
    assert run.model.label_names == SENT and run.model.task_names == ["sent", "topic"]


def test_save_load_and_task_selection(bb, tmp_path):
    run = build_and_train(bb, {"sent": sentiment(), "topic": topic()}, {"sent": sentiment(4), "topic": topic(3)},
                          args(), say=None)
    model = run.model
    row = run.result.history[-1]
    assert set(row["tasks"]) == {"sent", "topic"}
    assert row["accuracy"] == pytest.approx((row["tasks"]["sent"]["accuracy"] + row["tasks"]["topic"]["accuracy"]) / 2)
    model.save_pretrained(tmp_path / "a")
    loaded = LTuningModel.from_pretrained(tmp_path / "a", bb)
    assert loaded.config.tasks == model.config.tasks
    texts = topic(3).texts
    view = loaded.for_task("topic")
    assert view.label_names == TOPIC and loaded.label_names == SENT
    assert torch.equal(view.score_texts(texts), model.for_task("topic").score_texts(texts))
    assert torch.equal(loaded.score_texts(texts), model.score_texts(texts))
    assert all(p in TOPIC for p in view.predict(texts))
    # the task's label set scores as the same label texts through the candidate-label path
    assert torch.allclose(view.score_texts(texts), score_candidates(loaded, texts, TOPIC), atol=1e-6)
    metrics = evaluate(loaded, topic(3), task="topic")
    assert metrics["num_examples"] == 3 and len(metrics["confusion_matrix"]) == 3
    with pytest.raises(DataError, match="differ"):
        evaluate(loaded, topic(3))  # the primary labels are sent's
    with pytest.raises(ConfigError, match=r"task 'nope'.*its tasks are \['sent', 'topic'\]"):
        loaded.for_task("nope")
    card = (tmp_path / "a" / "README.md").read_text()  # the model card lists every task and how to pick one
    assert "## Tasks" in card and "| sent | neg (neg), pos (pos) |" in card
    assert "| topic | movie (movie), plot (plot), actors (actors) |" in card
    assert 'model.for_task("topic")' in card and "--adapter-task topic" in card


def test_task_view_follows_the_model(bb):
    """A cached view takes the model's mode and config on every call (it shares the method, not a snapshot of
    the model)."""
    model = build_and_train(bb, {"sent": sentiment(), "topic": topic()}, None, args(max_steps=2), say=None).model
    model.train()
    view = model.for_task("topic")
    model.eval()
    view = model.for_task("topic")
    view.predict(topic(3).texts)
    assert not view.training and not model.method.training   # score_texts restored eval, not the stale train mode
    model.config.objective = "pairwise"
    assert model.for_task("topic").config.objective == "pairwise"
    assert model.for_task("topic").config.label_names == TOPIC


def test_longer_task_label_than_l_refused(bb):
    """LT-prefix reads exactly l label tokens: a model built for one task's short labels refuses a task whose
    label is longer, instead of cutting it."""
    model = prepare_model(bb, SENT, method="lt-prefix", say=None)
    long = TextDataset(["the movie was a film", "the plot and story"], [0, 1],
                       ["the movie was great fun and the plot", "i"])  # label names are the label texts
    with pytest.raises(ConfigError, match=r"task 'long'.*longer than the adapter's label_length"):
        train(model, {"sent": sentiment(), "long": long}, None, args())


def test_classic_methods_refused(bb):
    with pytest.raises(ConfigError, match="fixed K-way head.*lt-prefix or lt-prompt"):
        build_and_train(bb, {"sent": sentiment(), "topic": topic()}, None, args(), method="prefix", say=None)
    model = prepare_model(bb, SENT, method="prompt", say=None)
    with pytest.raises(ConfigError, match="multi-task training.*label-conditioned"):
        train(model, {"sent": sentiment(), "topic": topic()}, None, args())


def test_a_config_with_tasks_alone_takes_the_first_tasks_labels(bb):
    cfg = LTuningConfig(method="lt-prompt", tasks={"topic": {"label_names": TOPIC}, "sent": {"label_names": SENT}})
    assert cfg.label_names == []
    model = LTuningModel(bb, cfg)
    assert model.label_names == TOPIC and model.config.label_texts == TOPIC and model.num_labels == 3
    assert model.for_task("sent").label_names == SENT


def test_inference_mode_scores_as_no_grad_and_leaves_no_inference_tensor_in_a_kept_view(bb):
    """Tensors made under torch.inference_mode have no version counter (the prediction cache's key) and cannot
    be saved for backward: a model or task view first used there scores as under no_grad, uncached, and a
    task view made there holds plain tensors (it is kept, and training reads it)."""
    cfg = LTuningConfig(method="lt-prefix", label_names=SENT,
                        tasks={"sent": {"label_names": SENT}, "topic": {"label_names": TOPIC}})
    texts = ["the movie was good", "bad plot", "great actors"]
    torch.manual_seed(5)
    ref = LTuningModel(bb, cfg).eval()
    with torch.no_grad():
        want, want_topic = ref.score_texts(texts), ref.for_task("topic").score_texts(texts)
    torch.manual_seed(5)
    with torch.inference_mode():
        model = LTuningModel(bb, cfg).eval()
        got, got_topic = model.score_texts(texts), model.for_task("topic").score_texts(texts)
        assert model.predict(texts) == ref.predict(texts)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_topic, want_topic, atol=1e-6)
    view = model.for_task("topic")
    assert not any(t.is_inference() for t in (view.label_states, view.label_mask))
    with torch.no_grad():
        assert torch.allclose(view.score_texts(texts), want_topic, atol=1e-6)
    # in another dtype the view's encodings are cast: that too outside inference mode
    half = LTuningModel(Backbone(*TINY["bert"](), name="tiny-bert"), cfg).to(torch.bfloat16)
    with torch.inference_mode():
        half.for_task("topic").score_texts(texts)
    view = half.for_task("topic")
    assert view.label_states.dtype == torch.bfloat16 and not view.label_states.is_inference()


def test_bad_tasks(bb):
    with pytest.raises(ConfigError, match=r"tasks\['one'\]: a task needs at least 2 labels"):
        LTuningConfig(tasks={"one": {"label_names": ["x"]}})
    with pytest.raises(ConfigError, match="first task"):
        LTuningConfig(label_names=SENT, tasks={"topic": {"label_names": TOPIC}})
    with pytest.raises(ConfigError, match="train_data"):
        build_and_train(bb, {"": sentiment()}, None, args(), say=None)
    with pytest.raises(DataError, match=r"validation_data: tasks \['other'\]"):
        build_and_train(bb, {"sent": sentiment()}, {"other": sentiment()}, args(), say=None)
    with pytest.raises(ConfigError, match="no task of that name"):
        prepare_model(bb, SENT, say=None).for_task("sent")


def test_resume_is_exact(bb, tmp_path):
    import shutil

    data = {"sent": sentiment(12), "topic": topic(24)}
    val = {"sent": sentiment(4), "topic": topic(3)}
    full = build_and_train(bb, data, val, args(checkpoint_every=3, output_dir=str(tmp_path)), say=None)
    shutil.rmtree(tmp_path / "checkpoints" / "step-6")  # as if killed after step 5
    resumed = build_and_train(bb, data, val, args(checkpoint_every=3, output_dir=str(tmp_path), resume=True), say=None)
    assert resumed.result.resumed_from == 3
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    def timeless(rows):  # every evaluation and logged loss, without the wall-clock fields
        return [{k: v for k, v in r.items() if "seconds" not in k and k != "elapsed"} for r in rows]

    assert timeless(resumed.result.history) == timeless(full.result.history)
    after = [r["loss"] for r in full.result.train_log if r["step"] > 3]
    assert after and [r["loss"] for r in resumed.result.train_log if r["step"] > 3] == after


def test_resume_with_the_tasks_in_another_order_is_refused(bb, tmp_path):
    """Task i's sampler state resumes task i: the same tasks (and primary labels) in another order would
    continue each task's data stream on another task, so the order is part of the run's options."""
    data = {"sent": sentiment(12), "topic": topic(24), "topic2": topic(18)}
    build_and_train(bb, data, None, args(checkpoint_every=3, output_dir=str(tmp_path)), say=None)
    swapped = {k: data[k] for k in ("sent", "topic2", "topic")}
    with pytest.raises(CheckpointError, match=r"task_order: checkpoint \['sent', 'topic', 'topic2'\], "
                                              r"now \['sent', 'topic2', 'topic'\]"):
        build_and_train(bb, swapped, None, args(checkpoint_every=3, output_dir=str(tmp_path), resume=True), say=None)


def test_cli_refusals(tmp_path, capsys):
    from ltuning.cli import main

    def error(argv) -> str:
        rc = main(argv)
        err = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
        assert rc != 0 and len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    out = ["--output-dir", str(tmp_path / "run")]
    assert "more than once" in error(["train", "--tasks", "demo", "demo", *out])
    assert "leave out --task" in error(["train", "--tasks", "demo", "trec", "--task", "demo", *out])


def test_saved_tasks_keep_their_order(bb, tmp_path):
    """adapter_config.json sorts its keys but not the tasks: the first task is the primary label set, so an
    adapter whose tasks are not in alphabetical order loads (it was refused as 'put the primary task first')."""
    run = build_and_train(bb, {"topic": topic(), "sent": sentiment()}, None, args(max_steps=2), say=None)
    run.model.save_pretrained(tmp_path / "a")
    loaded = LTuningModel.from_pretrained(tmp_path / "a", bb)
    assert loaded.task_names == ["topic", "sent"] and loaded.label_names == TOPIC
    text = (tmp_path / "a" / "adapter_config.json").read_text()
    assert text.index('"backbone_fingerprint"') < text.index('"label_names"') < text.index('"method"')  # sorted


def test_an_adapter_saved_with_sorted_tasks_loads_with_its_primary_first(bb, tmp_path):
    """Before config_json, adapter_config.json sorted ``tasks`` by name, so an adapter whose primary task was
    not first alphabetically did not load; it loads now, its primary task put back in front."""
    import json

    run = build_and_train(bb, {"topic": topic(), "sent": sentiment()}, None, args(), say=None)
    run.model.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    raw = json.loads(path.read_text())
    assert list(raw["tasks"]) == ["topic", "sent"]  # written in training order today
    path.write_text(json.dumps(raw, indent=2, sort_keys=True))  # what the older writer did
    assert list(json.loads(path.read_text())["tasks"]) == ["sent", "topic"]
    loaded = LTuningModel.from_pretrained(tmp_path / "a", bb)
    assert list(loaded.config.tasks) == ["topic", "sent"] and loaded.label_names == TOPIC
    texts = sentiment(4).texts
    assert torch.equal(loaded.for_task("sent").score_texts(texts), run.model.for_task("sent").score_texts(texts))
    assert torch.equal(loaded.score_texts(texts), run.model.score_texts(texts))


def test_unseen_label_head_reads_every_tasks_label_texts(bb):
    """unseen_label_head="cosine" leaves label sets of the adapter's tasks (any task's texts, a subset or a mix of
    tasks) to the trained head, and scores a set with a text no task had by the frozen similarity."""
    model = build_and_train(bb, {"sent": sentiment(), "topic": topic()}, None, args(max_steps=4), say=None).model
    model.eval()
    with torch.no_grad():  # a head far from its start, so the two scorings differ
        model.method.text_map.weight.add_(torch.randn_like(model.method.text_map.weight) * 0.5)
    texts = topic(3).texts
    for labels in (["plot", "actors"], ["neg", "movie"]):
        assert torch.equal(score_candidates(model, texts, labels, unseen_label_head="cosine"),
                           score_candidates(model, texts, labels))
    new = ["plot", "music"]
    assert not torch.allclose(score_candidates(model, texts, new, unseen_label_head="cosine"),
                              score_candidates(model, texts, new))
