"""Open-vocabulary labels: LT adapters score label texts they never saw; classic methods refuse."""

from __future__ import annotations

import pytest
import torch

from ltuning import LTuningConfig, get_ltuning_model
from ltuning.api import score_candidates
from ltuning.errors import ConfigError

TEXTS = ["the movie was very good", "bad plot", "i loved it", "awful boring film", "it was dull"]


def make(backbone, method, label_length=None, **options):
    lt = get_ltuning_model(backbone, LTuningConfig(method=method, label_length=label_length, **options),
                           labels={"neg": "negative", "pos": "positive", "neu": "neutral"})
    with torch.no_grad():
        for p in lt.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return lt.eval()


@pytest.mark.parametrize("method, options", [("lt-prefix", {}), ("lt-prompt", {}),
                                             ("lt-prefix", {"label_map_rank": 2})])  # e(y) read from each candidate
def test_candidates_equal_to_the_training_labels_give_the_same_scores(backbone, method, options):
    lt = make(backbone, method, **options)
    trained = lt.score_texts(TEXTS)  # (N, 3) from the cached label encodings
    again = score_candidates(lt, TEXTS, ["negative", "positive", "neutral"])
    assert torch.allclose(again, trained, atol=1e-5)
    # a subset, reordered: the same columns
    sub = score_candidates(lt, TEXTS, ["neutral", "negative"])
    assert torch.allclose(sub, trained[:, [2, 0]], atol=1e-5)


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_new_label_names(backbone, method):
    lt = make(backbone, method, label_length=6)
    out = lt.predict(TEXTS, candidate_labels=["bad", "good", "great fun"], return_scores=True)
    assert all(sorted(o["labels"]) == ["bad", "good", "great fun"] for o in out)
    assert all(abs(sum(o["scores"]) - 1) < 1e-5 for o in out)
    # the template is applied to every candidate: same as giving the filled-in texts
    templ = score_candidates(lt, TEXTS, ["the movie was bad", "the movie was good"])
    got = lt.predict(TEXTS, candidate_labels=["bad", "good"], hypothesis_template="the movie was {}",
                     return_scores=True)
    assert [o["labels"][0] for o in got] == [["bad", "good"][i] for i in templ.argmax(-1).tolist()]


def test_per_text_label_sets_match_separate_calls(backbone):
    lt = make(backbone, "lt-prompt")
    sets = [["bad", "good"], ["fun", "dull", "great"], ["bad", "good"], ["negative", "neutral"], ["fun", "dull", "great"]]
    together = lt.predict(TEXTS, candidate_labels=sets, return_scores=True)
    for text, labels, got in zip(TEXTS, sets, together, strict=True):
        alone = lt.predict([text], candidate_labels=labels, return_scores=True)[0]
        assert got["labels"] == alone["labels"]
        assert got["scores"] == pytest.approx(alone["scores"], abs=1e-5)
    with pytest.raises(ConfigError, match="one list per text"):
        lt.predict(TEXTS, candidate_labels=sets[:2])


def test_multi_label_is_an_independent_sigmoid_per_label(backbone):
    lt = make(backbone, "lt-prefix")
    logits = score_candidates(lt, TEXTS, ["negative", "positive", "neutral"])
    out = lt.predict(TEXTS, multi_label=True, return_scores=True)
    for z, o in zip(logits, out, strict=True):
        p = torch.sigmoid(z)
        by_name = dict(zip(["neg", "pos", "neu"], p.tolist(), strict=True))
        # every label, sorted by its sigmoid (the pipeline's multi_label output)
        assert o["labels"] == sorted(by_name, key=lambda n: -by_name[n])
        assert o["scores"] == pytest.approx([by_name[n] for n in o["labels"]], abs=1e-5)
        # without scores: the labels over the threshold, best first
        assert lt.predict(o["sequence"], multi_label=True) == [n for n in o["labels"] if by_name[n] >= 0.5]
    assert [sorted(r) for r in lt.predict(TEXTS, multi_label=True, threshold=0.0)] == [["neg", "neu", "pos"]] * len(TEXTS)
    for bad in (1.01, -0.1, float("nan"), "0.5"):  # not a probability: refused, not "nothing selected"
        with pytest.raises(ConfigError, match="threshold"):
            lt.predict(TEXTS, multi_label=True, threshold=bad)
    one = lt.predict(TEXTS, candidate_labels=["fun"], multi_label=True, threshold=0.0)
    assert one == [["fun"]] * len(TEXTS)


def test_lt_prefix_truncates_longer_candidates_to_label_length_with_a_warning(backbone):
    # label_length = the longest training label; the paper head: the similarity head's e(y) reads the whole
    # label text, so there only the prefix is built from the first l tokens
    lt = make(backbone, "lt-prefix", score_head="paper")
    length = lt.config.label_length
    with pytest.warns(UserWarning, match="truncated"):
        scores = score_candidates(lt, TEXTS, ["the movie was very bad", "good"])
    assert scores.shape == (len(TEXTS), 2)
    # truncation keeps the first label_length tokens: the same scores as the pre-truncated text
    cut = lt.backbone.tokenizer.decode(lt.backbone.tokenizer("the movie was very bad", truncation=True,
                                                             max_length=length)["input_ids"], skip_special_tokens=True)
    assert torch.allclose(scores[:, 0], score_candidates(lt, TEXTS, [cut, "good"])[:, 0], atol=1e-5)
    assert lt.config.label_length == length


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_classic_methods_refuse_with_a_clear_error(backbone, method):
    lt = make(backbone, method)
    with pytest.raises(ConfigError, match="label-conditioned method"):
        lt.predict(TEXTS, candidate_labels=["bad", "good"])
    with pytest.raises(ConfigError, match="label-conditioned method"):
        lt.predict(TEXTS, multi_label=True)
    with pytest.raises(ConfigError, match="label-conditioned"):
        score_candidates(lt, TEXTS, ["bad", "good"])
    assert len(lt.predict(TEXTS)) == len(TEXTS)  # its own labels still work


def test_bad_candidates(backbone):
    lt = make(backbone, "lt-prompt")
    with pytest.raises(ConfigError, match="unique"):
        lt.predict(TEXTS, candidate_labels=["bad", "bad"])
    with pytest.raises(ConfigError, match="at least 2"):
        lt.predict(TEXTS, candidate_labels=["bad"])
    with pytest.raises(ConfigError, match="empty"):
        lt.predict(TEXTS, candidate_labels=["bad", " "])
    with pytest.raises(ConfigError, match="{}"):
        lt.predict(TEXTS, candidate_labels=["bad", "good"], hypothesis_template="no slot")


@pytest.mark.parametrize("family,method", [("llama", "lt-prefix"), ("llama", "lt-prompt"), ("bert", "lt-prompt")])
def test_a_tokenizer_set_back_to_left_padding_changes_no_score(family, method):
    """A caller may set the tokenizer's padding side back to left (as for batched generation) after the model
    is built: label texts are still encoded right-padded, so candidates and texts score as before."""
    from test_families import TEXTS, make_model

    model = make_model(family, method)
    with torch.no_grad():
        for p in model.method.parameters():  # away from the zero start: the label states reach the scores
            p.add_(torch.randn_like(p) * 0.3)
    model.clear_injection_cache()
    candidates = ["bad", "a good one", "fine"]
    before = (model.score_texts(TEXTS), score_candidates(model, TEXTS, candidates))
    model.backbone.tokenizer.padding_side = "left"
    model.clear_injection_cache()
    after = (model.score_texts(TEXTS), score_candidates(model, TEXTS, candidates))
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
