"""The similarity score head (``score_head="similarity"``), adapters saved before it existed, and the
method hooks that keep method logic inside ``methods/``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rerun, tiny_bert
from safetensors.torch import save_file

from ltuning import LTuningConfig, get_ltuning_model
from ltuning.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter
from ltuning.backbones import Backbone
from ltuning.config import ScoreHead
from ltuning.data import TextDataset
from ltuning.errors import ConfigError
from ltuning.methods import METHODS, Injection, Method
from ltuning.model import LTuningModel
from ltuning.train import TrainArgs, train

TEXTS = ["the movie was very good", "bad plot", "i loved it"]
LABELS = {"neg": "negative", "pos": "positive"}

# adapter_config.json as ltuning wrote it before score_head existed (commit 26fe4bd), for a tiny BERT
# built right after torch.manual_seed(0); weights: a seeded draw of the shapes below; scores: what that
# commit's load_adapter(...).score_texts(TEXTS) returned.
OLD_CONFIG = {"backbone_fingerprint": "92c5c32ff04cb949", "base_model": "tiny-bert", "label_length": 3,
              "label_names": ["neg", "pos"], "label_position": "before", "label_texts": ["negative", "positive"],
              "max_length": 128, "prefix_pooling": "raw", "text_pairs": None, "text_pooling": "pooler"}
OLD_ADAPTERS = {
    "lt-prefix": ([("head.weight", (2, 32)), ("pool.weight", (1, 32)), ("transform.weight", (384, 3))],
                  [[-0.23605, -0.235816], [-0.233661, -0.233306], [-0.234145, -0.233842]]),
    "lt-prompt": ([("head.weight", (2, 32)), ("project.weight", (32, 32))],
                  [[-0.239078, -0.239832], [-0.239025, -0.240102], [-0.238862, -0.239801]]),
}


@pytest.mark.parametrize("method", sorted(OLD_ADAPTERS))
def test_adapter_saved_before_score_head_loads_and_scores_as_before(tmp_path, method):
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    shapes, expected = OLD_ADAPTERS[method]
    g = torch.Generator().manual_seed(1)
    save_file({k: torch.randn(shape, generator=g) * 0.3 for k, shape in shapes}, str(tmp_path / WEIGHTS_NAME))
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**OLD_CONFIG, "method": method}))
    model = load_adapter(tmp_path, backbone=bb)
    assert model.config.score_head.value == "paper"
    torch.testing.assert_close(model.score_texts(TEXTS), torch.tensor(expected), atol=2e-6, rtol=0)


def lt(method="lt-prefix", backbone=None, labels=LABELS, score_head="similarity", **kw) -> LTuningModel:
    bb = backbone or Backbone(*tiny_bert(), name="tiny-bert")
    return get_ltuning_model(bb, LTuningConfig(method=method, score_head=score_head, text_pooling="mean", **kw),
                             labels=labels)


def pooled(bb: Backbone, texts, **inject) -> torch.Tensor:
    enc = bb.tokenize(texts, 64)
    return bb(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), pooling="mean", **inject)


def test_label_vectors_are_the_frozen_models_own_label_embeddings():
    model = lt()
    torch.testing.assert_close(model.label_vectors, pooled(model.backbone, ["negative", "positive"]))


@pytest.mark.parametrize("score_head", ["similarity", "cosine", "anchored"])
def test_lt_prefix_similarity_starts_at_the_similarity_of_text_and_label(score_head):
    """Step 0: Z and C_zeta are zero, W the identity, so every label gets the same all-zero prefix and the
    pair logit is s * cos(p, e(y)) + b with p the text's pooled state under that prefix (the cosine head:
    the same, with nothing else in it)."""
    model = lt(score_head=score_head).eval()
    inj = model.injection()
    assert torch.count_nonzero(inj.prefix) == 0
    p = pooled(model.backbone, TEXTS, prefix=inj.prefix[:1].expand(len(TEXTS), -1, -1, -1, -1, -1))
    expected = 20.0 * F.cosine_similarity(p.unsqueeze(1), model.label_vectors.unsqueeze(0), dim=-1) - 4.0
    torch.testing.assert_close(model.score_texts(TEXTS), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("score_head", ["similarity", "cosine", "anchored"])
def test_lt_prompt_similarity_starts_with_the_similarity_of_text_and_label(score_head):
    model = lt("lt-prompt", score_head=score_head).eval()
    inj = model.injection()
    scores = model.score_texts(TEXTS)
    for k in range(2):  # rows [CLS] prompt_k text [SEP]: the head part is zero at step 0
        p = pooled(model.backbone, TEXTS, prompt=inj.prompt[k:k + 1].expand(len(TEXTS), -1, -1),
                   prompt_mask=inj.prompt_mask[k:k + 1].expand(len(TEXTS), -1))
        cos = F.cosine_similarity(p, model.label_vectors[k:k + 1], dim=-1)
        torch.testing.assert_close(scores[:, k], 20.0 * cos - 4.0, atol=1e-5, rtol=1e-5)


DATA = TextDataset(["the movie was very good", "bad plot", "i loved it", "awful and boring", "great fun",
                    "i hated it", "wonderful story", "dull film"], [1, 0, 1, 0, 1, 0, 1, 0], ["neg", "pos"])


@pytest.mark.parametrize("score_head", ["similarity", "cosine", "anchored"])
@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_similarity_head_trains_saves_and_loads_identically(tmp_path, method, score_head):
    model = lt(method, score_head=score_head)
    expected = METHODS[method].formula(model.backbone.dims, model.config.label_length, 2, score_head,
                                       label_map_rank=model.config.label_map_rank)[1]  # lt-prefix: its default map
    assert model.num_trainable_parameters() == expected
    before = {k: v.clone() for k, v in model.method.state_dict().items()}
    train(model, DATA, DATA, TrainArgs(max_steps=4, batch_size=4, eval_every=2, progress=False))
    assert any(not torch.equal(before[k], v) for k, v in model.method.state_dict().items())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["score_head"] == score_head
    assert f"score head | {score_head}" in (tmp_path / "README.md").read_text()
    loaded = load_adapter(tmp_path, backbone=model.backbone)
    assert torch.equal(loaded.score_texts(TEXTS), model.eval().score_texts(TEXTS))


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_the_cosine_head_trains_only_the_injection_at_its_own_default_rate(method):
    """score_head="cosine": the pair logit is 20 * cos(p, e(y)) - 4 at every step, so the trainable parameters
    are the label-conditioned injection's alone (LT-prefix F and Z, LT-prompt G), and training without a
    learning rate uses the method's cosine rate."""
    model = lt(method, score_head="cosine")
    injection = {"lt-prefix": ["pool.weight", "transform.weight"], "lt-prompt": ["project.weight"]}[method]
    if model.config.label_map_rank:  # lt-prefix's default label map (V, U) is part of its injection
        injection += ["label_down.weight", "label_up.weight"]
    assert [n for n, p in model.method.named_parameters() if p.requires_grad] == injection
    assert model.method.head is None
    pooled_rows = torch.randn(3, model.backbone.dims.hidden_size)
    vectors = torch.randn(3, model.backbone.dims.hidden_size)
    torch.testing.assert_close(model.method.pair_logit(pooled_rows, vectors),
                               20.0 * F.cosine_similarity(pooled_rows, vectors, dim=-1) - 4.0)
    with pytest.raises(ConfigError, match="cosine head needs the labels' embeddings"):
        model.method.pair_logit(pooled_rows)
    result = train(model, DATA, None, TrainArgs(max_steps=1, batch_size=4, progress=False))
    # lt-prefix: its own cosine rate; lt-prompt has none (the cosine head did not help it) and keeps 3e-3
    assert result.learning_rate == model.method.default_learning_rate == {"lt-prefix": 1e-2, "lt-prompt": 3e-3}[method]
    assert lt(method).method.default_learning_rate == 3e-3  # the other heads: the method's own default


@pytest.mark.parametrize("score_head", ["similarity", "cosine", "anchored"])
@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_candidate_labels_score_as_a_model_built_on_them(method, score_head):
    """Open vocabulary: candidates get their own prefixes / prompts and their own label vectors, exactly as
    a model whose label texts they were (the default, unseen_label_head="trained"); with "cosine", label texts the
    head was not trained on are scored by the cosine head's formula (the frozen similarity of the prefixed text),
    which for the cosine head is its own scoring."""
    model = lt(method, label_length=3, score_head=score_head).eval()
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    new = {"bad": "bad", "good": "good"}
    other = lt(method, backbone=model.backbone, labels=new, label_length=3, score_head=score_head).eval()
    other.method.load_state_dict(model.method.state_dict())
    frozen = lt(method, backbone=model.backbone, labels=new, label_length=3, score_head="cosine").eval()
    frozen.method.load_state_dict({k: v for k, v in model.method.state_dict().items()
                                   if k in frozen.method.state_dict()})  # the prefix / prompt maps, no head
    for head, want_model in (("trained", other), ("cosine", frozen)):
        got = model.predict(TEXTS, candidate_labels=["bad", "good"], return_scores=True, unseen_label_head=head)
        want = torch.softmax(want_model.score_texts(TEXTS), -1)
        for g, w in zip(got, want, strict=True):
            scores = dict(zip(g["labels"], g["scores"], strict=True))
            assert [scores["bad"], scores["good"]] == pytest.approx(w.tolist(), abs=1e-5)
    if score_head != "cosine":  # the trained head moved: the two differ
        a = model.predict_proba(TEXTS, candidate_labels=["bad", "good"], unseen_label_head="cosine")
        b = model.predict_proba(TEXTS, candidate_labels=["bad", "good"])
        assert not np.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("score_head", ["similarity", "anchored", "paper"])
def test_candidates_from_the_training_labels_keep_the_trained_head(score_head):
    """The frozen similarity scores only label texts the head was not trained on: the adapter's own label
    texts as candidates (in another order) score as the model itself with unseen_label_head="cosine" too; the
    paper head reads no label embeddings and scores every candidate with its trained head."""
    model = lt("lt-prefix", score_head=score_head).eval()
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    own = model.predict_proba(TEXTS)
    flipped = model.predict_proba(TEXTS, candidate_labels=["positive", "negative"], unseen_label_head="cosine")
    np.testing.assert_allclose(flipped, own[:, ::-1], atol=1e-5)
    if score_head == "paper":
        np.testing.assert_allclose(
            model.predict_proba(TEXTS, candidate_labels=["bad", "good"], unseen_label_head="cosine"),
            model.predict_proba(TEXTS, candidate_labels=["bad", "good"]))


def test_unseen_label_head_is_checked():
    model = lt().eval()
    with pytest.raises(ConfigError, match="unseen_label_head"):
        model.predict(TEXTS, candidate_labels=["bad", "good"], unseen_label_head="frozen")


@pytest.mark.parametrize(("method", "accumulate"), [("lt-prefix", 1), ("lt-prompt", 1), ("lt-prefix", 2)])
def test_the_anchored_head_is_the_similarity_head_plus_a_prior_weighted_by_one_over_n(method, accumulate):
    """score_head="anchored": the similarity head's parameters and scores, and a training loss that adds
    (anchor_weight / n) * (||W - I||^2 + ||C_zeta||^2), n the training texts. The prior's gradient is zero at
    the start, so one step from the same weights and batch moves both heads alike; the second step's loss
    then differs by exactly the prior at those (common) weights, also when a step accumulates several batches
    (the prior counts once per optimizer step)."""
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    sim, anc = lt(method, backbone=bb), lt(method, backbone=bb, score_head="anchored")
    start = {k: v.clone() for k, v in sim.method.state_dict().items()}
    anc.method.load_state_dict(start)
    assert sim.method.anchor_loss(len(DATA)) is None and float(anc.method.anchor_loss(len(DATA))) == 0.0
    assert anc.num_trainable_parameters() == sim.num_trainable_parameters()
    assert torch.equal(anc.eval().score_texts(TEXTS), sim.eval().score_texts(TEXTS))
    args = TrainArgs(max_steps=2, batch_size=4, learning_rate=0.05, progress=False,
                     gradient_accumulation_steps=accumulate)
    one = TrainArgs(**{**args.__dict__, "max_steps": 1})
    logs = {h: train(m, DATA, None, args).train_log for h, m in (("similarity", sim), ("anchored", anc))}
    assert logs["anchored"][0]["loss"] == logs["similarity"][0]["loss"]
    after_one = lt(method, backbone=bb, score_head="anchored")  # the same start, one step: step 2's weights
    after_one.method.load_state_dict(start)
    train(after_one, DATA, None, one)
    m = after_one.method
    eye = torch.eye(m.text_map.weight.shape[0])
    penalty = float((m.text_map.weight - eye).pow(2).sum() + m.head.weight.pow(2).sum())
    expected = Method.anchor_weight / len(DATA) * penalty
    assert penalty > 0 and float(m.anchor_loss(len(DATA))) == pytest.approx(expected, rel=1e-6)
    assert logs["anchored"][1]["loss"] - logs["similarity"][1]["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("n", [0, -1, True, 3.0, None])
def test_the_anchored_prior_refuses_a_training_size_that_is_not_a_positive_int(n):
    """anchor_loss(n) weighs the prior by 1 / n: an n that is not a positive int is a ConfigError naming the
    method and the value (the similarity head has no prior and ignores n)."""
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    with pytest.raises(ConfigError, match=rf"training lt-prefix with the anchored .* \(got num_train_texts={n!r}\)"):
        lt("lt-prefix", backbone=bb, score_head="anchored").method.anchor_loss(n)
    assert lt("lt-prefix", backbone=bb, score_head="similarity").method.anchor_loss(n) is None


def test_a_config_from_another_backbone_gets_this_backbones_fingerprint(tmp_path):
    """Bug A: a config that carries another backbone's fingerprint (copied from another model, or read from
    an adapter) is rebuilt with the fingerprint of the backbone it is built on, and saves / loads there."""
    from transformers import BertConfig, BertModel

    model, tok = tiny_bert()
    deeper = Backbone(BertModel(BertConfig(**{**model.config.to_dict(), "num_hidden_layers": 3})), tok, "deeper")
    bert = Backbone(model, tok, name="tiny-bert")
    first = get_ltuning_model(deeper, LTuningConfig(method="lt-prefix"), labels=LABELS)
    assert first.config.backbone_fingerprint == deeper.fingerprint
    second = LTuningModel(bert, first.config)
    assert second.config.backbone_fingerprint == bert.fingerprint != deeper.fingerprint
    second.save_pretrained(tmp_path)
    assert torch.equal(load_adapter(tmp_path, backbone=bert).score_texts(TEXTS), second.eval().score_texts(TEXTS))


def test_a_label_length_below_the_special_tokens_is_a_config_error():
    bb = Backbone(*tiny_bert(), name="tiny-bert")
    with pytest.raises(ConfigError, match="label_length=1 is too short for tiny-bert"):
        get_ltuning_model(bb, LTuningConfig(label_length=1), labels=LABELS)
    # the classic methods read no label tokens: l is only their number of virtual tokens
    assert get_ltuning_model(bb, LTuningConfig(method="prefix", label_length=1), labels=LABELS).config.label_length == 1


def test_long_candidate_labels_cut_texts_for_the_labels_scored():
    """Bug B: an LT-prompt's candidate labels longer than its training labels take more of a learned
    position table (64 here): texts are cut for the labels actually scored, not the training l."""
    model = get_ltuning_model(Backbone(*tiny_bert(), name="tiny-bert"), LTuningConfig(method="lt-prompt"),
                              labels=LABELS).eval()
    long_text = " ".join(["the movie was very good and"] * 12)  # 72 words, past the 64 positions
    candidates = ["a very very bad and awful and boring film", "a very very good and great and fun film"]
    scores = model.predict([long_text, "bad plot"], candidate_labels=candidates, return_scores=True)
    assert all(abs(sum(s["scores"]) - 1) < 1e-5 for s in scores)


class Echo(Method):
    """A toy method added in a test: a new method needs its own module and nothing else."""

    name = "echo"
    injection = "prompt"
    label_conditioned = True
    description = "the label encoding itself as the prompt"

    def forward(self, label_states, label_mask):
        return Injection(prompt=label_states, prompt_mask=label_mask)

    @staticmethod
    def formula(dims, label_length, num_labels, score_head="paper"):
        return "2*d", 2 * dims.hidden_size


def test_a_new_method_needs_no_edit_outside_methods(monkeypatch, tmp_path):
    monkeypatch.setitem(METHODS, "echo", Echo)
    model = get_ltuning_model(Backbone(*tiny_bert(), name="tiny-bert"), LTuningConfig(method="echo"), labels=LABELS)
    train(model, DATA, DATA, TrainArgs(max_steps=2, batch_size=4, eval_every=2, progress=False))
    model.save_pretrained(tmp_path)
    assert load_adapter(tmp_path, backbone=model.backbone).predict(["great fun"]) == model.predict(["great fun"])
    with pytest.raises(ConfigError, match="not supported for method 'prefix'"):
        LTuningModel(model.backbone, LTuningConfig(method="prefix", label_names=["a", "b"], label_position="after"))


def test_a_run_config_written_before_score_head_reruns_with_the_paper_head(tmp_path):
    """`ltuning train --config runs/x/run_config.json` reruns a run exactly: a run_config.json from before
    --score-head lists every other option and no score_head, and that run used the paper's head."""
    from ltuning.cli import _apply_config, _resolved_config, build_parser

    old = {"command": "train", "method": "lt-prefix", "task": "sst2", "label_position": "before",
           "prefix_pooling": "raw", "text_pooling": "auto", "max_steps": 3}
    new = {**old, "score_head": "similarity"}
    # a short config file leaves the head unset: the method's default head, which the run's own
    # run_config.json then records by name (so that it reruns with that head if the default changes)
    # an explicit null is "the method's default head" (a file written after --score-head existed), not "paper"
    for content, expected in ((old, "paper"), (new, "similarity"), ({**old, "score_head": None}, None),
                              ({"command": "train", "method": "lt-prefix"}, None)):
        args, resolved = rerun(tmp_path, content)
        assert args.score_head == expected
        assert resolved["score_head"] == (expected or METHODS["lt-prefix"].default_score_head.value)
    assert _resolved_config(build_parser().parse_args(["train", "--method", "prefix"]))["score_head"] is None
    # a config of one's own that names label_position and prefix_pooling is no older run_config.json: today's
    # defaults (it got the paper head, no label map); an older run_config.json of an LT run trained on pairs
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(old))
    parser = build_parser()
    args = parser.parse_args(_apply_config(parser, ["train", "--config", str(mine)])[0])
    assert (args.score_head, args.label_map_rank, args.objective) == (None, None, "listwise")
    assert rerun(tmp_path, old)[0].objective == "pairwise"
    assert rerun(tmp_path, {**old, "method": "prefix"})[0].objective == "listwise"
    assert rerun(tmp_path, {**old, "objective": "listwise"})[0].objective == "listwise"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_unset_score_head_is_the_methods_own_default(method):
    """LTuningConfig(score_head=None) (what `ltuning train` passes without --score-head): an LT method builds its
    ``default_score_head`` and trains at that head's default rate; a classic method the paper's K-way head. The
    built model's config records the head by name, so a saved adapter says which it has."""
    cls = METHODS[method]
    model = get_ltuning_model(Backbone(*tiny_bert(), name="tiny-bert"), LTuningConfig(method=method), labels=LABELS)
    assert LTuningConfig().score_head is None
    expected = cls.default_score_head if cls.label_conditioned else ScoreHead.PAPER
    assert model.config.score_head == model.method.score_head == expected
    assert model.method.default_learning_rate == cls.learning_rate_for(None) == cls.learning_rate_for(expected)


def test_a_saved_adapter_with_a_null_score_head_is_refused(tmp_path):
    """A built model's config names its head, so a saved adapter with "score_head": null was not written by a
    trained model; it is refused rather than loaded with whatever today's default head is."""
    from ltuning.errors import AdapterError

    bb = Backbone(*tiny_bert(), name="tiny-bert")
    shapes, _ = OLD_ADAPTERS["lt-prefix"]
    save_file({k: torch.zeros(shape) for k, shape in shapes}, str(tmp_path / WEIGHTS_NAME))
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**OLD_CONFIG, "method": "lt-prefix", "score_head": None}))
    with pytest.raises(AdapterError, match="score_head is null; a saved adapter names the head it was trained with"):
        load_adapter(tmp_path, backbone=bb)
