"""Pipeline-shaped prediction: ``model(texts)``, ``predict(..., return_scores=True)`` and ``predict_proba``
return what transformers' zero-shot-classification pipeline and scikit-learn return, and an adapter folder
loads as ``transformers.pipeline("ltuning-classification", model=<folder>)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ltuning import LTuningConfig, LTuningModel, get_ltuning_model
from ltuning.errors import ConfigError

TEXTS = ["the movie was good", "awful boring film", "i loved it"]


def make(method: str = "lt-prompt", labels=("negative", "positive", "neutral")) -> LTuningModel:
    from conftest import tiny_bert

    bert, tok = tiny_bert()
    lt = get_ltuning_model(bert, LTuningConfig(method=method), labels=list(labels), tokenizer=tok)
    with torch.no_grad():  # away from the all-equal start, so that the sort order means something
        for p in lt.method.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return lt.eval()


def as_dict(result: dict) -> dict[str, float]:
    return dict(zip(result["labels"], result["scores"], strict=True))


def same(a, b) -> bool:
    """Equal results up to float noise (a text scored alone pads differently from one in a batch)."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return (a["sequence"], a["labels"]) == (b["sequence"], b["labels"]) and \
        a["scores"] == pytest.approx(b["scores"], abs=1e-5)


@pytest.mark.parametrize("method", ["lt-prefix", "prompt"])
def test_return_scores_is_the_zero_shot_pipeline_dict(method):
    lt = make(method)
    out = lt.predict(TEXTS, return_scores=True)
    probs = lt.predict_proba(TEXTS)
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    for text, r, p in zip(TEXTS, out, probs, strict=True):
        assert list(r) == ["sequence", "labels", "scores"] and r["sequence"] == text
        assert r["scores"] == sorted(r["scores"], reverse=True)
        # predict_proba's columns are in label order; the dict's labels are sorted by the same numbers
        assert [as_dict(r)[n] for n in lt.label_names] == pytest.approx(p.tolist(), abs=1e-6)
    assert [r["labels"][0] for r in out] == lt.predict(TEXTS)
    assert same(lt.predict(TEXTS[0], return_scores=True), out[0])  # one string: one dict


def test_calling_the_model_with_texts_is_the_pipeline_call():
    lt = make()
    assert lt(TEXTS) == lt.predict(TEXTS, return_scores=True)
    assert lt(TEXTS[0]) == lt.predict(TEXTS[0], return_scores=True)
    assert lt([]) == []
    # by keyword too, under our name or the zero-shot pipeline's
    assert lt(texts=TEXTS) == lt(TEXTS)
    assert lt(sequences=TEXTS[0], candidate_labels=["bad", "good"]) == lt(TEXTS[0], ["bad", "good"])
    # the pipeline's argument order: candidate labels second
    assert lt(TEXTS, ["bad", "good"]) == lt.predict(TEXTS, candidate_labels=["bad", "good"], return_scores=True)
    assert lt(TEXTS, "bad, good", multi_label=True) == lt.predict(TEXTS, candidate_labels=["bad", "good"],
                                                                 multi_label=True, return_scores=True)
    # training's path is unchanged: a dict of tensors goes to forward
    batch = lt.tokenize(TEXTS)
    with torch.no_grad():
        logits = lt(batch, torch.tensor([0, 1, 2]))
    assert logits.shape == (3,)
    assert torch.allclose(lt.class_scores(batch), lt.score_texts(TEXTS), atol=1e-5)


def test_multi_label_is_sorted_and_predict_proba_gives_sigmoids():
    lt = make("lt-prefix")
    scored = lt.predict(TEXTS, multi_label=True, return_scores=True)
    probs = lt.predict_proba(TEXTS, multi_label=True)
    for r, p in zip(scored, probs, strict=True):
        assert r["scores"] == sorted(r["scores"], reverse=True) and len(r["labels"]) == 3
        assert [as_dict(r)[n] for n in lt.label_names] == pytest.approx(p.tolist(), abs=1e-6)
    chosen = lt.predict(TEXTS, multi_label=True, threshold=0.3)
    for r, c in zip(scored, chosen, strict=True):  # the labels over the threshold, best first
        assert c == [n for n, s in zip(r["labels"], r["scores"], strict=True) if s >= 0.3]


def test_predict_proba_with_candidate_labels_and_its_limits():
    lt = make()
    probs = lt.predict_proba(TEXTS, candidate_labels=["good", "bad"])
    assert probs.shape == (3, 2)
    for r, p in zip(lt.predict(TEXTS, candidate_labels=["good", "bad"], return_scores=True), probs, strict=True):
        assert [as_dict(r)["good"], as_dict(r)["bad"]] == pytest.approx(p.tolist(), abs=1e-6)
    assert lt.predict_proba("i loved it").shape == (1, 3)
    assert lt.predict_proba([]).shape == (0, 3)
    # no texts: K is the candidates', and what no text would be allowed is refused as well
    assert lt.predict_proba([], candidate_labels=["good", "bad"]).shape == (0, 2)
    assert lt.predict_proba([], candidate_labels="good, bad, fine, long").shape == (0, 4)
    with pytest.raises(ConfigError, match="label-conditioned"):
        make("prompt").predict([], candidate_labels=["good", "bad"])
    with pytest.raises(ConfigError, match="same label set"):
        lt.predict_proba(TEXTS[:2], candidate_labels=[["bad", "good"], ["fun", "dull", "long"]])
    with pytest.raises(ConfigError, match="label-conditioned"):
        make("prompt").predict_proba(TEXTS, multi_label=True)


def test_base_model_and_device():
    lt = make()
    assert lt.base_model is lt.backbone.model and lt.base_model.__class__.__name__ == "BertModel"
    assert lt.device == torch.device("cpu") and lt.dtype == torch.float32


def test_transformers_pipeline_loads_an_adapter_folder(tmp_path):
    from test_cli import save_tiny_bert
    from transformers import pipeline

    import ltuning
    import ltuning.pipelines  # registers the task and the config type

    bert = save_tiny_bert(tmp_path / "bert")
    lt = get_ltuning_model(str(bert), LTuningConfig(method="lt-prompt"), labels=["negative", "positive"])
    adapter = lt.save_pretrained(tmp_path / "adapter")
    assert json.loads((adapter / "config.json").read_text())["model_type"] == "ltuning"
    classifier = pipeline(ltuning.pipelines.TASK, model=str(adapter))
    assert isinstance(classifier.model, LTuningModel)
    assert classifier(TEXTS[0]) == lt(TEXTS[0])
    assert classifier(TEXTS) == lt(TEXTS)
    assert classifier(TEXTS, ["bad", "good"]) == lt(TEXTS, ["bad", "good"])
    assert classifier(TEXTS, candidate_labels="bad,good", hypothesis_template="{} film", multi_label=True) == \
        lt.predict(TEXTS, candidate_labels=["bad", "good"], hypothesis_template="{} film", multi_label=True,
                   return_scores=True)
    assert same(list(classifier(iter(TEXTS))), lt(TEXTS))  # an iterator: an iterator of results
    # an adapter saved before config.json existed: ltuning.pipeline loads it all the same
    (adapter / "config.json").unlink()
    with pytest.raises(ValueError, match="Unrecognized model .*config.json"):
        pipeline(ltuning.pipelines.TASK, model=str(adapter))
    assert ltuning.pipeline(adapter)(TEXTS) == lt(TEXTS)
    assert same(ltuning.pipeline(lt, batch_size=2)(TEXTS), lt(TEXTS))  # padded otherwise: float noise
    # the pipeline call's own batch_size / num_workers, as transformers pipelines take them
    assert same(ltuning.pipeline(adapter)(TEXTS, batch_size=1, num_workers=0), lt(TEXTS))
    assert same(classifier(TEXTS, ["bad", "good"], batch_size=2), lt(TEXTS, ["bad", "good"]))
    assert same(list(classifier(iter(TEXTS), batch_size=2)), lt(TEXTS))
    # a generator and a datasets column, scored batch_size texts at a time (the base class refuses batches
    # without a tokenizer); a pipeline made with a batch_size takes generators too
    assert same(list(classifier((t for t in TEXTS), ["bad", "good"], batch_size=2)), lt(TEXTS, ["bad", "good"]))
    assert same(list(ltuning.pipeline(adapter, batch_size=4)(t for t in TEXTS)), lt(TEXTS))
    datasets = pytest.importorskip("datasets")
    from transformers.pipelines.pt_utils import KeyDataset

    ds = datasets.Dataset.from_dict({"text": TEXTS})
    assert same(list(classifier(KeyDataset(ds, "text"), batch_size=2)), lt(TEXTS))
    with pytest.raises(ConfigError, match="batch_size"):
        classifier(TEXTS, batch_size=0)


def test_pipeline_over_a_loaded_model_refuses_a_backbone_argument():
    import ltuning

    lt = make()
    for kwargs, named in (({"model": "/nonexistent"}, "model"), ({"trust_remote_code": True}, "trust_remote_code")):
        with pytest.raises(ConfigError, match=f"^{named}: the adapter is a loaded LTuningModel"):
            ltuning.pipeline(lt, **kwargs)
    assert ltuning.pipeline(lt)(TEXTS) == lt(TEXTS)


def test_pipeline_over_a_loaded_model_takes_its_own_backbone():
    import ltuning

    lt = make()
    assert ltuning.pipeline(lt, model=lt.base_model)(TEXTS) == lt(TEXTS)
