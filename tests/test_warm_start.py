"""Warm start (``build_and_train(init_from=...)``, ``ltuning train --init-from``): training starts from a saved
adapter's weights, for example a multi-task adapter adapted to a new task from a few examples."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import _offline, models, save_tiny_bert  # noqa: F401 - fixtures

from ltuning import LTuningModel, build_and_train, load_backbone
from ltuning.cli import main
from ltuning.data import TextDataset
from ltuning.errors import AdapterError, ConfigError
from ltuning.recipe import prepare_model, warm_start
from ltuning.train import TrainArgs

REVIEWS = ["neg", "pos"]  # words the tiny tokenizer knows (conftest.LABEL_WORDS)
SPAM = ["no", "yes"]
ROWS = [("a great film", 1), ("dull and long", 0), ("i loved it", 1), ("bad plot", 0)]
MESSAGES = [("win a free prize now", 1), ("see you at lunch", 0), ("claim your cash", 1), ("running late", 0)]


def data(rows, names) -> TextDataset:
    return TextDataset([t for t, _ in rows], [y for _, y in rows], list(names))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return load_backbone(str(save_tiny_bert(tmp_path_factory.mktemp("warm") / "tiny-bert")))


@pytest.fixture(scope="module")
def source(backbone, tmp_path_factory):
    """A trained lt-prefix adapter on review labels, with l = 5 ([CLS] + 3 words + [SEP]; longer than the new labels need)."""
    run = build_and_train(backbone, data(ROWS, REVIEWS), None, TrainArgs(max_steps=6, batch_size=4, progress=False),
                          method="lt-prefix", label_texts=["neg neu b", "pos neu c"], say=None)
    folder = tmp_path_factory.mktemp("warm") / "reviews"
    run.model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source_without_map(backbone, tmp_path_factory):
    """As ``source``, trained without lt-prefix's label map (label_map_rank=0: the paper's Z alone)."""
    run = build_and_train(backbone, data(ROWS, REVIEWS), None, TrainArgs(max_steps=6, batch_size=4, progress=False),
                          method="lt-prefix", label_texts=["neg neu b", "pos neu c"], label_map_rank=0, say=None)
    folder = tmp_path_factory.mktemp("warm") / "reviews-no-map"
    run.model.save_pretrained(folder)
    return folder


def test_warm_start_on_new_labels_scores_as_the_adapter_does_with_those_candidate_labels(backbone, source):
    loaded = LTuningModel.from_pretrained(source, backbone)
    l = loaded.config.label_length
    model = prepare_model(backbone, SPAM, label_length=l, say=None)
    fresh = {k: v.clone() for k, v in model.method.state_dict().items()}
    got = warm_start(model, source)
    assert got.label_names == REVIEWS  # the adapter's config is returned
    state = loaded.method.state_dict()
    assert model.method.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.method.state_dict().items())
    assert any(not torch.equal(v, state[k]) for k, v in fresh.items())  # the load changed something
    texts = [t for t, _ in MESSAGES]
    model.eval()
    # the same weights, reading the spam labels' texts: the scores of the adapter given them as candidates
    expected = loaded.predict_proba(texts, candidate_labels=SPAM)
    assert torch.allclose(torch.as_tensor(model.predict_proba(texts)), torch.as_tensor(expected), atol=1e-6)


def test_build_and_train_takes_the_adapters_label_length_and_trains_from_its_weights(backbone, source):
    l = LTuningModel.from_pretrained(source, backbone).config.label_length
    args = TrainArgs(max_steps=2, batch_size=4, progress=False)
    seen = {}

    def on_built(model):
        seen.update({k: v.clone() for k, v in model.method.state_dict().items()})

    run = build_and_train(backbone, data(MESSAGES, SPAM), None, args, method="lt-prefix", init_from=source,
                          on_built=on_built, say=None)
    assert run.model.config.label_length == l
    assert run.model.config.label_names == SPAM
    state = LTuningModel.from_pretrained(source, backbone).method.state_dict()
    assert all(torch.equal(seen[k], state[k]) for k in state)  # training began at the adapter's weights
    assert any(not torch.equal(v, state[k]) for k, v in run.model.method.state_dict().items())  # and moved


@pytest.mark.parametrize("options, match", [
    ({"method": "lt-prompt"}, r"it is a lt-prefix adapter and this run trains lt-prompt; give --method lt-prefix"),
    ({"text_pooling": "cls"}, r"text_pooling is 'pooler' there, 'cls' here \(give --text-pooling pooler\)"),
    ({"score_head": "paper"}, r"score_head is 'anchored' there, 'paper' here \(give --score-head anchored\)"),
    ({"prefix_pooling": "softmax"}, r"prefix_pooling is 'raw' there, 'softmax' here"),
    ({"prefix_layers": 1}, r"prefix_layers is 2 there, 1 here \(give --prefix-layers 2\)"),
])
def test_an_option_the_weights_depend_on_must_match(backbone, source, options, match):
    with pytest.raises(ConfigError, match=match):
        build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                        init_from=source, say=None, **{"method": "lt-prefix", **options})


def test_a_label_map_may_be_added_to_an_adapter_without_one_and_not_dropped(backbone, source_without_map, tmp_path):
    """U starts at zero, so a warm start that adds lt-prefix's label map scores exactly as the source adapter
    does (its V and U as built); one that drops the map of a source trained with one is refused."""
    source = source_without_map
    loaded = LTuningModel.from_pretrained(source, backbone)
    assert loaded.config.label_map_rank == 0 and not hasattr(loaded.method, "label_up")
    texts = [t for t, _ in MESSAGES]
    expected = loaded.predict_proba(texts, candidate_labels=SPAM)
    for start in (source, loaded):  # an adapter folder, and a model in memory
        model = prepare_model(backbone, SPAM, label_length=loaded.config.label_length, label_map_rank=3, say=None)
        with torch.no_grad():  # as if trained before: the warm start puts U back at zero
            model.method.label_up.weight.normal_()
        built = {k: v.clone() for k, v in model.method.state_dict().items() if k.startswith("label_")}
        warm_start(model, start)
        state = model.method.state_dict()
        assert sorted(built) == ["label_down.weight", "label_up.weight"]
        assert torch.equal(state["label_down.weight"], built["label_down.weight"])  # V stays as built
        assert state["label_up.weight"].abs().sum() == 0  # U at zero: the map adds nothing
        assert all(torch.equal(state[k], v) for k, v in loaded.method.state_dict().items())  # the rest: the source's
        model.eval()
        assert torch.allclose(torch.as_tensor(model.predict_proba(texts)), torch.as_tensor(expected), atol=1e-6)
    args = TrainArgs(max_steps=2, batch_size=4, progress=False)
    run = build_and_train(backbone, data(MESSAGES, SPAM), None, args, method="lt-prefix", init_from=source,
                          label_map_rank=3, say=None)
    assert run.model.config.label_map_rank == 3 and run.model.method.label_up.weight.abs().sum() > 0  # it trains
    run.model.save_pretrained(tmp_path / "mapped")
    with pytest.raises(ConfigError, match=r"label_map_rank is 3 there, None here \(give --label-map-rank 3\)"):
        warm_start(prepare_model(backbone, SPAM, label_length=loaded.config.label_length, label_map_rank=0,
                                 say=None), tmp_path / "mapped")


def test_an_unset_score_head_is_the_source_adapters(backbone, source, tmp_path):
    """Without score_head (--score-head), a warm start trains with the source adapter's head, as it takes its l
    and depth: an adapter trained with the similarity head (LT-prefix's default before the anchored head)
    continues with it; given, the head must match."""
    args = TrainArgs(max_steps=2, batch_size=4, progress=False)
    run = build_and_train(backbone, data(ROWS, REVIEWS), None, args, method="lt-prefix", score_head="similarity",
                          say=None)
    run.model.save_pretrained(tmp_path / "similarity")
    again = build_and_train(backbone, data(MESSAGES, SPAM), None, args, method="lt-prefix",
                            init_from=tmp_path / "similarity", say=None)
    assert again.model.config.score_head.value == "similarity"
    assert LTuningModel.from_pretrained(source, backbone).config.score_head.value == "anchored"  # today's default
    with pytest.raises(ConfigError, match=r"score_head is 'similarity' there, 'anchored' here"):
        build_and_train(backbone, data(MESSAGES, SPAM), None, args, method="lt-prefix",
                        init_from=tmp_path / "similarity", score_head="anchored", say=None)


def test_the_anchored_prior_stays_centred_on_the_frozen_similarity_after_a_warm_start(backbone, source):
    """After a warm start the anchored head's prior is still centred on the fresh head's W = I, C_zeta = 0, not on
    the source's head (L2-SP), which found no support on the few-shot dev rows (BENCHMARKS.md, the few-shot
    ablation table and "One adapter for several tasks"). So it starts at (10 / n) * (||W_src - I||^2 + ||C_src||^2), as for the adapter loaded as it is."""
    loaded = LTuningModel.from_pretrained(source, backbone)
    assert loaded.config.score_head.value == "anchored"
    W, C = loaded.method.text_map.weight, loaded.method.head.weight
    n = 8
    from_identity = (10 / n) * ((W - torch.eye(W.shape[0])).pow(2).sum() + C.pow(2).sum())
    assert from_identity.item() > 0  # the source's head moved off the fresh one in its 6 steps
    assert torch.allclose(loaded.method.anchor_loss(n), from_identity)
    model = prepare_model(backbone, SPAM, label_length=loaded.config.label_length, say=None)
    warm_start(model, source)
    assert torch.allclose(model.method.anchor_loss(n), from_identity)


def test_a_resumed_anchored_warm_start_continues_bit_exactly(backbone, source, tmp_path, monkeypatch):
    """A warm start with the anchored head's prior, interrupted after 2 of 4 steps and resumed with the same
    source, ends on the uninterrupted run's weights."""
    import ltuning.checkpoint as ckpt

    def run(out, **kw):
        args = TrainArgs(max_steps=4, batch_size=4, checkpoint_every=1, output_dir=str(tmp_path / out),
                         progress=False, **kw)
        return build_and_train(backbone, data(MESSAGES, SPAM), None, args, method="lt-prefix", init_from=source,
                               say=None)

    whole = run("whole").model.method.state_dict()
    real, saved = ckpt.save_checkpoint, []

    def save_twice_then_interrupt(*a, **k):
        saved.append(real(*a, **k))
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_twice_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run("split")
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    resumed = run("split", resume=True)
    assert resumed.result.resumed_from == 2
    got = resumed.model.method.state_dict()
    assert all(torch.equal(got[k], v) for k, v in whole.items())


def test_label_length_given_and_different_is_refused(backbone, source):
    l = LTuningModel.from_pretrained(source, backbone).config.label_length
    with pytest.raises(ConfigError, match=rf"label_length is {l} there, {l + 1} here \(give --label-length {l}\)"):
        build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                        init_from=source, label_length=l + 1, say=None)


def test_classic_adapters_warm_start_only_on_their_own_labels(backbone, tmp_path):
    run = build_and_train(backbone, data(ROWS, REVIEWS), None, TrainArgs(max_steps=2, batch_size=4, progress=False),
                          method="prefix", say=None)
    run.model.save_pretrained(tmp_path / "prefix")
    with pytest.raises(ConfigError, match=r"one row per label, for \['neg', 'pos'\].*needs an LT method"):
        build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                        method="prefix", init_from=tmp_path / "prefix", say=None)
    seen = {}
    again = build_and_train(backbone, data(ROWS, REVIEWS), None, TrainArgs(max_steps=1, progress=False),
                            method="prefix", init_from=tmp_path / "prefix", say=None,
                            on_built=lambda m: seen.update({k: v.clone() for k, v in m.method.state_dict().items()}))
    assert again.model.config.method == "prefix"
    assert seen and all(torch.equal(v, run.model.method.state_dict()[k]) for k, v in seen.items())


def test_another_backbone_or_a_missing_folder_is_refused(source, tmp_path):
    other = load_backbone(str(save_tiny_bert(tmp_path / "three-layers", 3)))
    with pytest.raises(AdapterError, match=r"fingerprint.*give --model .*tiny-bert"):
        build_and_train(other, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                        init_from=source, say=None)
    with pytest.raises(AdapterError):
        build_and_train(other, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                        init_from=tmp_path / "nothing-here", say=None)
    with pytest.raises(ConfigError, match="init_from"):
        build_and_train(other, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False), init_from=3,
                        say=None)


def _write(path, rows, names):
    path.write_text("text,label\n" + "".join(f"{t},{names[y]}\n" for t, y in rows), encoding="utf-8")
    return str(path)


def test_cli_init_from(models, tmp_path, capsys):  # noqa: F811 - the fixture
    reviews, messages = _write(tmp_path / "r.csv", ROWS, REVIEWS), _write(tmp_path / "m.csv", MESSAGES, SPAM)
    common = ["--model", models["tiny"], "--text-column", "text", "--label-column", "label", "--max-steps", "2",
              "--batch-size", "4", "--quiet"]
    assert main(["train", "--train-file", reviews, "--output-dir", str(tmp_path / "src"), *common]) == 0
    assert main(["train", "--train-file", messages, "--init-from", str(tmp_path / "src"),
                 "--output-dir", str(tmp_path / "dst"), *common]) == 0
    out = capsys.readouterr().out
    assert f"starting from the weights of {tmp_path / 'src'}" in out
    meta = json.loads((tmp_path / "dst" / "adapter_config.json").read_text())
    assert meta["label_names"] == SPAM and meta["_meta"]["init_from"] == str(tmp_path / "src")
    assert f"| init from | {tmp_path / 'src'} |" in (tmp_path / "dst" / "README.md").read_text()
    # its run_config.json records the head and map rank the warm start took from the source, so it reruns
    assert main(["train", "--train-file", reviews, "--output-dir", str(tmp_path / "src0"), "--score-head",
                 "similarity", "--label-map-rank", "0", *common]) == 0
    assert main(["train", "--train-file", messages, "--init-from", str(tmp_path / "src0"),
                 "--output-dir", str(tmp_path / "dst0"), *common]) == 0
    run_config = json.loads((tmp_path / "dst0" / "run_config.json").read_text())
    assert (run_config["score_head"], run_config["label_map_rank"]) == ("similarity", 0)
    assert main(["train", "--config", str(tmp_path / "dst0" / "run_config.json"),
                 f"output_dir={tmp_path / 'dst1'}"]) == 0
    assert (tmp_path / "dst1" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "dst0" / "adapter_model.safetensors").read_bytes()
    capsys.readouterr()
    # a mismatch is said before anything is written
    rc = main(["train", "--train-file", messages, "--init-from", str(tmp_path / "src"), "--method", "lt-prompt",
               "--output-dir", str(tmp_path / "bad"), *common])
    err = capsys.readouterr().err
    assert rc != 0 and "give --method lt-prefix" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_a_model_in_memory_is_a_source_too(backbone, source):
    loaded = LTuningModel.from_pretrained(source, backbone)
    model = prepare_model(backbone, SPAM, label_length=loaded.config.label_length, say=None)
    assert warm_start(model, loaded) is loaded.config
    assert all(torch.equal(v, loaded.method.state_dict()[k]) for k, v in model.method.state_dict().items())
    run = build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, batch_size=4, progress=False),
                          init_from=loaded, say=None)
    assert run.model.config.label_length == loaded.config.label_length
    # the source model is not trained by the warm-started run: the weights were copied, not shared
    fresh = LTuningModel.from_pretrained(source, backbone)
    assert all(torch.equal(v, fresh.method.state_dict()[k]) for k, v in loaded.method.state_dict().items())


def test_a_source_model_on_another_backbone_is_refused(backbone, source, tmp_path):
    other = load_backbone(str(save_tiny_bert(tmp_path / "three-layers", 3)))
    loaded = LTuningModel.from_pretrained(source, backbone)
    model = prepare_model(other, SPAM, label_length=loaded.config.label_length, say=None)
    with pytest.raises(ConfigError, match="the source model is on backbone"):
        warm_start(model, loaded)


def test_the_prefix_depth_defaults_to_the_adapters(backbone, tmp_path):
    run = build_and_train(backbone, data(ROWS, REVIEWS), None, TrainArgs(max_steps=1, batch_size=4, progress=False),
                          prefix_layers=1, say=None)
    run.model.save_pretrained(tmp_path / "top1")
    again = build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                            init_from=tmp_path / "top1", say=None)
    assert again.model.config.prefix_layers == 1


def test_lt_prefix_refuses_label_texts_longer_than_the_adapters_l(backbone, source):
    l = LTuningModel.from_pretrained(source, backbone).config.label_length
    long = ["no neu b c 0 1", "yes neu b c 0 1"]  # 6 words + [CLS] [SEP]: longer than l
    assert l == 5
    with pytest.raises(ConfigError, match=r"label texts 'no neu b c 0 1' \(8 tokens\), 'yes neu b c 0 1' \(8 tokens\) "
                                          r"are longer than the adapter's l = 5"):
        build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                        init_from=source, label_texts=long, say=None)
    # a multi-task run names the task
    with pytest.raises(ConfigError, match=r"label texts of task 'b' 'no neu b c 0 1' \(8 tokens\)"):
        build_and_train(backbone, {"a": data(ROWS, REVIEWS), "b": data(MESSAGES, SPAM)}, None,
                        TrainArgs(max_steps=1, progress=False), init_from=source,
                        task_label_texts={"b": long}, say=None)


def test_a_multi_task_run_starts_from_an_adapter(backbone, source):
    seen = {}
    run = build_and_train(backbone, {"a": data(ROWS, REVIEWS), "b": data(MESSAGES, SPAM)}, None,
                          TrainArgs(max_steps=2, batch_size=4, progress=False), init_from=source, say=None,
                          on_built=lambda m: seen.update({k: v.clone() for k, v in m.method.state_dict().items()}))
    assert run.model.task_names == ["a", "b"]
    state = LTuningModel.from_pretrained(source, backbone).method.state_dict()
    assert all(torch.equal(seen[k], state[k]) for k in state)


def test_lt_prompt_weights_do_not_depend_on_l(backbone, tmp_path):
    run = build_and_train(backbone, data(ROWS, REVIEWS), None, TrainArgs(max_steps=4, batch_size=4, progress=False),
                          method="lt-prompt", say=None)
    run.model.save_pretrained(tmp_path / "prompt")
    loaded = LTuningModel.from_pretrained(tmp_path / "prompt", backbone)
    long = ["no neu b c 0 1", "yes neu b c 0 1"]
    model = prepare_model(backbone, SPAM, method="lt-prompt", label_texts=long, say=None)
    assert model.config.label_length > loaded.config.label_length  # its own l, not the adapter's
    warm_start(model, loaded)
    model.eval()
    texts = [t for t, _ in MESSAGES]
    expected = loaded.predict_proba(texts, candidate_labels=long)
    assert torch.allclose(torch.as_tensor(model.predict_proba(texts)), torch.as_tensor(expected), atol=1e-6)
    # and build_and_train leaves l to the labels
    again = build_and_train(backbone, data(MESSAGES, SPAM), None, TrainArgs(max_steps=1, progress=False),
                            method="lt-prompt", label_texts=long, init_from=tmp_path / "prompt", say=None)
    assert again.model.config.label_length == model.config.label_length


def test_cli_refuses_an_init_from_inside_the_output_dir(models, tmp_path, capsys):  # noqa: F811 - the fixture
    reviews = _write(tmp_path / "r.csv", ROWS, REVIEWS)
    common = ["--model", models["tiny"], "--text-column", "text", "--label-column", "label", "--max-steps", "2",
              "--batch-size", "4", "--quiet"]
    assert main(["train", "--train-file", reviews, "--output-dir", str(tmp_path / "src"), *common]) == 0
    before = sorted(p.name for p in (tmp_path / "src").iterdir())
    rc = main(["train", "--train-file", reviews, "--init-from", str(tmp_path / "src"), "--overwrite",
               "--output-dir", str(tmp_path / "src"), *common])
    err = capsys.readouterr().err
    assert rc != 0 and "is inside --output-dir" in err
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == before  # the source adapter is untouched


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_cli_resume_of_a_warm_start_asks_for_the_same_init_from(models, tmp_path, capsys, monkeypatch,  # noqa: F811
                                                               method):
    """A warm start is one of the run's options: a resume without --init-from is refused by name (for lt-prefix
    the adapter's l, longer than the new labels need, also changes the weight shapes; for lt-prompt the flag is
    the only difference), and so is a resume that adds it; with it, the run resumes."""
    import ltuning.checkpoint as ckpt
    from ltuning.checkpoint import list_checkpoints

    reviews, messages = _write(tmp_path / "r.csv", ROWS, REVIEWS), _write(tmp_path / "m.csv", MESSAGES, SPAM)
    common = ["--model", models["tiny"], "--method", method, "--text-column", "text", "--label-column", "label",
              "--batch-size", "4", "--quiet"]
    assert main(["train", "--train-file", reviews, "--label-texts", "neg neu b,pos neu c", "--max-steps", "2",
                 "--output-dir", str(tmp_path / "src"), *common]) == 0
    real = ckpt.save_checkpoint

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    def run(out):
        return ["train", "--train-file", messages, "--max-steps", "4", "--checkpoint-every", "1",
                "--output-dir", str(tmp_path / out), *common]

    warm = ["--init-from", str(tmp_path / "src")]
    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_interrupt)
    assert main([*run("dst"), *warm]) == 130 and main(run("cold")) == 130
    capsys.readouterr()
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    assert main([*run("dst"), "--resume"]) != 0
    err = capsys.readouterr().err
    assert "warm_start: checkpoint True, now False" in err and "resume it with the same --init-from" in err, err
    assert ("weights: checkpoint" in err) == (method == "lt-prefix"), err  # l 5 from the adapter, 3 without it
    assert main([*run("cold"), *warm, "--resume"]) != 0
    err = capsys.readouterr().err
    assert "warm_start: checkpoint False, now True" in err and "resume it without --init-from" in err, err
    assert main([*run("dst"), *warm, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((tmp_path / "dst" / "adapter_config.json").read_text())["_meta"]["init_from"] == \
        str(tmp_path / "src")
    # a checkpoint written before the key was recorded resumes with --init-from (its weights fit)
    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_interrupt)
    assert main([*run("old"), *warm]) == 130
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    for _, folder in list_checkpoints(tmp_path / "old"):
        state = json.loads((folder / "trainer_state.json").read_text())
        del state["run"]["warm_start"]
        (folder / "trainer_state.json").write_text(json.dumps(state))
    assert main([*run("old"), *warm, "--resume"]) == 0
