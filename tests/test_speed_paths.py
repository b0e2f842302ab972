"""The fast prediction paths give the plain paths' scores (benchmarks/speed.py times them; no timing here).

Fast: ``score_texts`` (cached injection, texts sorted by length, dynamic padding, several texts' B*K rows
per forward within a token budget). Plain: one text per forward through ``class_scores``, and one
(text, label) pair per forward with the injection recomputed, as the official code scores.
"""

from __future__ import annotations

import pytest
import torch

from ltuning.config import LTuningConfig
from ltuning.model import LTuningModel

TEXTS = [
    "the movie was very good",
    "boring",
    "i really hated the plot and the actors were awful , not fun at all",
    "great fun",
    "the story is quite dull and the film was not good",
    "wonderful",
    "what a terrible display",
]
PAIRS = [("the movie was good", "it is positive"), ("bad", "it is negative and the plot is awful"),
         ("a film", "this")]
LABELS = ["negative", "positive", "neutral"]
METHODS = ["lt-prefix", "lt-prompt", "prefix", "prompt"]


def make(backbone, method: str, score_head: str = "paper") -> LTuningModel:
    """The paper head unless asked: these tests are about batching and caching, and build injections with
    the method itself (the similarity head also needs the label vectors, which plain_scores adds)."""
    model = LTuningModel(backbone, LTuningConfig(method=method, label_names=LABELS, score_head=score_head,
                                                 label_texts=["it is negative", "it is positive", "neutral"]))
    with torch.no_grad():  # move off the initialisation so that every label scores differently
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def plain_scores(model: LTuningModel, texts) -> torch.Tensor:
    """One text per forward, injection recomputed, no sorting, no budget."""
    rows = []
    with torch.no_grad():
        for t in texts:
            inj = model.method(model.label_states, model.label_mask)
            inj.label_vectors = model.label_vectors
            rows.append(model.class_scores(model.tokenize([t]), injection=inj)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("method, score_head", [(m, h) for m in METHODS for h in ("paper", "similarity", "cosine")
                                                if m.startswith("lt-") or h == "paper"])  # classic: a K-way head
def test_score_texts_equals_one_text_per_forward(backbone, method, score_head):
    model = make(backbone, method, score_head)
    ref = plain_scores(model, TEXTS)
    for max_tokens in (None, 1, 24, 10**9):
        for batch_size in (1, 3, 64):
            got = model.score_texts(TEXTS, batch_size=batch_size, max_tokens=max_tokens)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_score_texts_equals_one_pair_per_forward(backbone, method):
    model = make(backbone, method)
    got = model.score_texts(TEXTS)
    with torch.no_grad():
        for i, t in enumerate(TEXTS):
            for k in range(len(LABELS)):
                inj = model.injection()
                logit = model(model.tokenize([t]), torch.tensor([k]), injection=inj)
                torch.testing.assert_close(got[i, k], logit[0], atol=1e-5, rtol=1e-5)


def test_score_texts_on_sentence_pairs(backbone):
    model = make(backbone, "lt-prefix")
    torch.testing.assert_close(model.score_texts(PAIRS, max_tokens=1), plain_scores(model, PAIRS),
                               atol=1e-5, rtol=1e-5)


def test_score_texts_with_a_given_injection(backbone):
    """Another injection (e.g. other label texts): K follows the injection, not the training labels."""
    model = make(backbone, "lt-prefix")
    states, mask = backbone.encode_labels(["bad", "good", "fun", "dull"], model.config.label_length)
    with torch.no_grad():
        inj = model.method(states, mask)
    got = model.score_texts(TEXTS, max_tokens=16, injection=inj)
    assert got.shape == (len(TEXTS), 4)
    with torch.no_grad():
        ref = torch.stack([model.class_scores(model.tokenize([t]), injection=inj)[0] for t in TEXTS])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_injection_is_cached_in_eval_mode_only(backbone):
    model = make(backbone, "lt-prefix")
    with torch.no_grad():
        a, b = model.injection(), model.injection()
    assert a is b  # cached
    model.train()
    with torch.no_grad():
        c = model.injection()
    assert c is not a  # train() drops the cache; no caching while training
    out = model.injection()
    assert out.prefix.requires_grad  # with gradients on: always fresh, differentiable
    model.eval()
    with torch.inference_mode():
        d = model.injection()
    with torch.no_grad():
        assert model.injection() is d


def test_injection_cache_follows_parameter_changes(backbone):
    model = make(backbone, "lt-prefix")
    before = model.score_texts(TEXTS)
    # in-place update (as an optimizer step does)
    with torch.no_grad():
        model.method.transform.weight.mul_(2.0)
    after = model.score_texts(TEXTS)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain_scores(model, TEXTS), atol=1e-5, rtol=1e-5)
    # load_state_dict back to the old weights
    state = {k: v.clone() for k, v in model.method.state_dict().items()}
    state["transform.weight"] = state["transform.weight"] / 2.0
    model.method.load_state_dict(state)
    torch.testing.assert_close(model.score_texts(TEXTS), before, atol=1e-5, rtol=1e-5)
    # a new parameter tensor
    model.method.head.weight = torch.nn.Parameter(torch.zeros_like(model.method.head.weight))
    assert torch.count_nonzero(model.score_texts(TEXTS)) == 0
    # an edit through .data is not tracked: clear_injection_cache() is the documented way
    with torch.no_grad():
        model.injection()
    model.method.transform.weight.data.mul_(3.0)
    model.clear_injection_cache()
    torch.testing.assert_close(model.score_texts(TEXTS), plain_scores(model, TEXTS), atol=1e-5, rtol=1e-5)


def test_training_after_prediction_uses_fresh_injection(backbone):
    """A train step after score_texts sees the current parameters and gets gradients."""
    model = make(backbone, "lt-prefix")
    model.score_texts(TEXTS)
    model.train()
    batch = model.tokenize(TEXTS[:2])
    loss = model.loss(batch, torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([1, 0]))
    loss.backward()
    assert model.method.transform.weight.grad is not None
    assert model.training  # score_texts restored the mode
