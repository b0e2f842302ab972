"""LT-prefix's label map (``label_map_rank`` r): each label's prefix also gets U V e(y), e(y) the mean of the
label's frozen token states, V = Linear(d, r), U = Linear(r, 2*j*l*d_kv) started at zero.

What is checked (tiny random models of tests/test_families.py):
- at the start the map adds nothing: the scores are the model's without it, exactly;
- the prefix it adds is U V of the masked mean of the label's token states (padding left out), by hand;
- one training step moves U, and then labels whose token scores Z cannot tell apart get different prefixes;
- trainable counts match the formula (every score head, j = 1 and 2), save / load keeps it and the scores,
  adapters saved without the key load as before (no map), bad values and other methods are refused, the
  CLI flag reaches the adapter, its card and ``params``, and a warm start takes the source's rank.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import rerun
from test_cli import _offline, files, models, one_error_line, params_json, train_args  # noqa: F401 - fixtures
from test_families import LABEL_TEXTS, LABELS, TEXTS, build, make_model

from ltuning.cli import main
from ltuning.config import LTuningConfig
from ltuning.data import TextDataset
from ltuning.errors import AdapterError, ConfigError
from ltuning.methods import METHODS
from ltuning.model import LTuningModel
from ltuning.train import TrainArgs, train


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_starts_as_the_model_without_it(family):
    plain = make_model(family, "lt-prefix", label_map_rank=0)
    mapped = make_model(family, "lt-prefix", label_map_rank=3)
    missing, unexpected = mapped.method.load_state_dict(plain.method.state_dict(), strict=False)
    assert sorted(missing) == ["label_down.weight", "label_up.weight"] and not unexpected
    assert mapped.method.label_up.weight.abs().sum() == 0
    with torch.no_grad():
        torch.testing.assert_close(mapped.score_texts(TEXTS), plain.score_texts(TEXTS), atol=0, rtol=0)


def test_the_added_prefix_is_the_map_of_the_mean_label_state():
    model = make_model("bert", "lt-prefix", label_map_rank=2, prefix_layers=1)
    method = model.method
    with torch.no_grad():
        method.label_up.weight.normal_()
        states, mask = model.label_states, model.label_mask
        assert not bool(mask.all())  # one label is shorter: its padding must not count
        got = method(states, mask).prefix
        method.label_map_rank = 0  # Z's prefix alone
        own = method(states, mask).prefix
        method.label_map_rank = 2
        for k in range(states.shape[0]):
            real = states[k][mask[k]]
            e = real.mean(0)
            added = method.label_up.weight @ (method.label_down.weight @ e)
            torch.testing.assert_close((got[k] - own[k]).flatten(), added, atol=1e-5, rtol=1e-5)


def test_training_moves_the_map():
    model = make_model("bert", "lt-prefix", label_map_rank=4)
    for p in (model.method.pool.weight, model.method.transform.weight):  # Z stays at zero: the map alone
        p.requires_grad_(False)
    data = TextDataset(TEXTS, [i % len(LABELS) for i in range(len(TEXTS))], LABELS)
    train(model, data, None, TrainArgs(max_steps=2, batch_size=4, learning_rate=1e-2, seed=0, progress=False))
    assert model.method.transform.weight.abs().sum() == 0 and model.method.label_up.weight.abs().sum() > 0
    prefix = model.method(model.label_states, model.label_mask).prefix
    assert not torch.allclose(prefix[0], prefix[1])  # the map alone gives the labels different prefixes


def test_a_rank_above_the_width_is_refused():
    d = make_model("bert", "lt-prefix").backbone.dims.hidden_size
    assert make_model("bert", "lt-prefix", label_map_rank=d).config.label_map_rank == d
    with pytest.raises(ConfigError, match=f"at most the backbone's width d = {d}"):
        make_model("bert", "lt-prefix", label_map_rank=d + 1)


def test_softmax_pooling_over_one_token_labels_is_refused_only_without_a_map():
    """Softmax over one real token is 1, so without a map every label gets the same prefix; the map reads each
    label's own encoding, so with one the labels differ. llama's tiny tokenizer adds no special tokens here."""
    one = dict(label_texts=["bad", "good", "fine"], prefix_pooling="softmax")
    cfg = LTuningConfig(method="lt-prefix", label_names=LABELS, max_length=32, label_map_rank=0, **one)
    with pytest.raises(ConfigError, match=r"two or more label texts are one token \(\['bad', 'good', 'fine'\]"):
        LTuningModel(build("llama"), cfg)
    # two one-token labels beside a longer one get the same prefix too (the tie is between those two)
    mixed = dict(one, label_texts=["bad", "good", "fine and dandy"])
    with pytest.raises(ConfigError, match=r"\(\['bad', 'good'\] of \['bad', 'good', 'fine and dandy'\]"):
        LTuningModel(build("llama"), LTuningConfig(method="lt-prefix", label_names=LABELS, max_length=32,
                                                   label_map_rank=0, **mixed))
    # one one-token label alone has nothing to tie with
    LTuningModel(build("llama"), LTuningConfig(method="lt-prefix", label_names=LABELS, max_length=32,
                                               label_map_rank=0, **dict(one, label_texts=["bad", "not good",
                                                                                           "fine and dandy"])))
    # the same rule for candidate labels (a template makes them longer) and for each task of a multi-task config
    fine = LTuningModel(build("llama"), LTuningConfig(method="lt-prefix", label_names=LABELS, max_length=32,
                                                      label_map_rank=0, **dict(one, label_texts=[
                                                          "bad", "not good", "fine and dandy"])))
    with pytest.raises(ConfigError, match=r"two or more candidate labels are one token \(\['bad', 'good'\] .*"
                                          r"hypothesis template such as"):
        fine.predict(TEXTS, candidate_labels=["bad", "good", "fine and dandy"])
    assert len(fine.predict(TEXTS, candidate_labels=["bad", "good"], hypothesis_template="{} !")) == len(TEXTS)
    tasks = {"long": {"label_names": ["not good", "fine and dandy"]}, "short": {"label_names": ["bad", "good"]}}
    with pytest.raises(ConfigError, match=r"two or more task 'short' label texts are one token \(\['bad', 'good'\]"):
        LTuningModel(build("llama"), LTuningConfig(method="lt-prefix", tasks=tasks, max_length=32, label_map_rank=0,
                                                   prefix_pooling="softmax"))
    model = LTuningModel(build("llama"), LTuningConfig(method="lt-prefix", label_names=LABELS, max_length=32,
                                                     label_map_rank=2, **one))
    assert bool((model.label_mask.sum(-1) == 1).all())
    with torch.no_grad():
        model.method.label_up.weight.normal_()
        prefix = model.method(model.label_states, model.label_mask).prefix
    assert not torch.allclose(prefix[0], prefix[1])


@pytest.mark.parametrize("score_head", ["paper", "similarity", "cosine", "anchored"])
def test_parameter_counts(score_head):
    for j in (1, 2):
        r = 3
        lt = make_model("llama", "lt-prefix", prefix_layers=j, score_head=score_head, label_map_rank=r)
        base = make_model("llama", "lt-prefix", prefix_layers=j, score_head=score_head, label_map_rank=0)
        d, dkv, l, K = lt.backbone.dims.hidden_size, lt.backbone.dims.kv_dim, lt.config.label_length, len(LABELS)
        assert dkv != d  # llama's grouped keys/values: the map's output is the prefix's size, d_kv per layer
        assert lt.num_trainable_parameters() == base.num_trainable_parameters() + r * (d + 2 * l * j * dkv)
        expr, value = METHODS["lt-prefix"].formula(lt.backbone.dims, l, K, lt.config.score_head, j, r)
        assert value == lt.num_trainable_parameters() and "r*(d + 2*l*" in expr


def test_adapters_round_trip_and_old_ones_have_no_map(tmp_path):
    model = make_model("bert", "lt-prefix", label_map_rank=2)
    with torch.no_grad():
        model.method.label_up.weight.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["label_map_rank"] == 2
    loaded = LTuningModel.from_pretrained(tmp_path / "a", build("bert"))
    assert loaded.config.label_map_rank == 2
    torch.testing.assert_close(loaded.score_texts(TEXTS), model.score_texts(TEXTS), atol=0, rtol=0)
    old = make_model("bert", "lt-prefix", label_map_rank=0)
    old.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "adapter_config.json"
    raw = json.loads(path.read_text())
    assert raw["label_map_rank"] == 0
    del raw["label_map_rank"]  # as adapters saved before the option existed
    path.write_text(json.dumps(raw))
    back = LTuningModel.from_pretrained(tmp_path / "old", build("bert"))
    assert back.config.label_map_rank == 0 and not hasattr(back.method, "label_up")
    torch.testing.assert_close(back.score_texts(TEXTS), old.score_texts(TEXTS), atol=0, rtol=0)
    raw["label_map_rank"] = None  # null meant "no map" before the map became the default
    path.write_text(json.dumps(raw))
    back = LTuningModel.from_pretrained(tmp_path / "old", build("bert"))
    assert back.config.label_map_rank == 0 and not hasattr(back.method, "label_up")
    raw["label_map_rank"] = "8"
    path.write_text(json.dumps(raw))
    with pytest.raises(AdapterError, match="label_map_rank must be an integer or null"):
        LTuningModel.from_pretrained(tmp_path / "old", build("bert"))


@pytest.mark.parametrize("bad", [-1, -2])
def test_bad_ranks_are_refused(bad):
    with pytest.raises(ConfigError, match=r"label_map_rank \(--label-map-rank\) must be a positive integer"):
        LTuningConfig(method="lt-prefix", label_names=LABELS, label_texts=LABEL_TEXTS, label_map_rank=bad)
    # 0 means no map
    assert LTuningConfig(method="lt-prefix", label_names=LABELS, label_texts=LABEL_TEXTS,
                         label_map_rank=0).label_map_rank == 0


@pytest.mark.parametrize("method", ["lt-prompt", "prefix", "prompt"])
def test_other_methods_refuse_it(method):
    with pytest.raises(ConfigError, match=f"label_map_rank.*{method} has no such map"):
        make_model("bert", method, label_map_rank=2)


def test_cli_train_params_warm_start_and_errors(models, files, tmp_path, capsys):  # noqa: F811 - fixtures
    out = tmp_path / "mapped"
    assert main(train_args(models, files, out, "--label-map-rank", "2", "--max-steps", "2")) == 0
    assert json.loads((out / "adapter_config.json").read_text())["label_map_rank"] == 2
    assert "label map rank | 2" in (out / "README.md").read_text()
    # a warm start takes the source's rank when none is given, and names the flag when another is
    warm = tmp_path / "warm"
    assert main(train_args(models, files, warm, "--init-from", str(out), "--max-steps", "1")) == 0
    assert json.loads((warm / "adapter_config.json").read_text())["label_map_rank"] == 2
    assert main(train_args(models, files, tmp_path / "w3", "--init-from", str(out), "--label-map-rank", "3")) == 2
    one_error_line(capsys, 2, "label_map_rank is 2 there, 3 here (give --label-map-rank 2)")
    info, rows = params_json(models, capsys, "--label-map-rank", "2")
    assert info["label_map_rank"] == 2 and all(r["match"] for r in rows.values())
    assert "r*(d" in rows["lt-prefix"]["formula"] and "r*(d" not in rows["prefix"]["formula"]
    assert main(["params", "--model", models["tiny"], "--label-map-rank", "2", "--prefix-layers", "1"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "; prefix layers j=1; label map rank r=2 (lt-prefix); backbone" in head
    assert main(train_args(models, files, tmp_path / "x", "--label-map-rank", "-1")) == 2
    one_error_line(capsys, 2, "label_map_rank (--label-map-rank) must be a positive integer")
    assert main(train_args(models, files, tmp_path / "y", "--method", "prefix", "--label-map-rank", "2")) == 2
    one_error_line(capsys, 2, "prefix has no such map")
    assert main(["params", "--model", models["tiny"], "--label-map-rank", "-1"]) == 2
    one_error_line(capsys, 2, "--label-map-rank must be >= 0")


def test_lt_prefix_has_the_map_by_default(tmp_path):
    default = METHODS["lt-prefix"].default_label_map_rank
    assert default == 8
    model = make_model("bert", "lt-prefix")
    assert model.config.label_map_rank == default and model.method.label_map_rank == default
    assert model.method.label_down.weight.shape[0] == default and model.method.label_up.weight.abs().sum() == 0
    model.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["label_map_rank"] == default
    expr, value = METHODS["lt-prefix"].formula(model.backbone.dims, model.config.label_length, len(LABELS),
                                                model.config.score_head, None, model.config.label_map_rank)
    assert value == model.num_trainable_parameters() and "r*(d + 2*l*" in expr


def test_rank_zero_builds_no_map(tmp_path):
    model = make_model("bert", "lt-prefix", label_map_rank=0)
    assert model.config.label_map_rank == 0 and not hasattr(model.method, "label_up")
    assert not hasattr(model.method, "label_down")
    model.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["label_map_rank"] == 0
    back = LTuningModel.from_pretrained(tmp_path / "a", build("bert"))
    assert back.config.label_map_rank == 0 and not hasattr(back.method, "label_up")


@pytest.mark.parametrize("method", ["lt-prompt", "prefix", "prompt"])
def test_classic_methods_have_no_rank_and_accept_zero(method):
    assert METHODS[method].default_label_map_rank is None
    assert make_model("bert", method).config.label_map_rank is None
    zero = make_model("bert", method, label_map_rank=0)
    assert zero.config.label_map_rank is None and not hasattr(zero.method, "label_up")


def test_cli_default_and_zero(models, files, tmp_path, capsys):  # noqa: F811 - fixtures
    out = tmp_path / "plain"
    assert main(train_args(models, files, out, "--label-map-rank", "0", "--max-steps", "1")) == 0
    assert json.loads((out / "adapter_config.json").read_text())["label_map_rank"] == 0
    capsys.readouterr()
    default = METHODS["lt-prefix"].default_label_map_rank
    info, rows = params_json(models, capsys)
    assert info["label_map_rank"] == default and all(r["match"] for r in rows.values())
    assert "r*(d" in rows["lt-prefix"]["formula"]
    assert main(["params", "--model", models["tiny"]]) == 0
    assert f"; label map rank r={default} (lt-prefix); backbone" in capsys.readouterr().out.splitlines()[0]
    info, rows = params_json(models, capsys, "--label-map-rank", "0")
    assert info["label_map_rank"] == 0 and "r*(d" not in rows["lt-prefix"]["formula"]


def test_run_config_records_the_rank_and_an_older_one_reruns_without_a_map(tmp_path):
    """`ltuning train --config runs/x/run_config.json` reruns a run exactly: its run_config.json names the rank
    the run built (8 by default, 0 with --label-map-rank 0), and one written before the map was the default
    (every option listed, label_map_rank null or absent) was a run without a map."""
    from ltuning.cli import _resolved_config, build_parser

    parse = build_parser().parse_args
    assert _resolved_config(parse(["train", "--method", "lt-prefix"]))["label_map_rank"] == 8
    assert _resolved_config(parse(["train", "--method", "lt-prefix", "--label-map-rank", "0"]))["label_map_rank"] == 0
    assert _resolved_config(parse(["train", "--method", "prefix"]))["label_map_rank"] is None
    old = {"command": "train", "method": "lt-prefix", "task": "sst2", "label_position": "before",
           "prefix_pooling": "raw", "text_pooling": "auto", "score_head": "anchored", "max_steps": 3}
    for content, expected in (({**old, "label_map_rank": None}, 0), (old, 0), ({**old, "label_map_rank": 8}, 8),
                              ({"command": "train", "method": "lt-prefix"}, None)):  # a short file: the default
        args, resolved = rerun(tmp_path, content)
        assert args.label_map_rank == expected
        assert resolved["label_map_rank"] == (8 if expected is None else expected)
