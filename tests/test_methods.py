"""The four methods on both families: what is trainable, what stays frozen, and how many parameters.

Expected parameter counts are computed here from the model configs (m, d, n_kv, head_dim, l, K), as the
paper's A.5 writes them, not from the methods' own ``formula()``.
"""

from __future__ import annotations

import pytest
import torch

from ltuning.config import LTuningConfig
from ltuning.data import TextDataset
from ltuning.methods import METHODS
from ltuning.model import LTuningModel
from ltuning.train import TrainArgs, train

METHOD_NAMES = ["lt-prefix", "lt-prompt", "prefix", "prompt"]
# Multi-word label texts of different lengths: padding inside the label encodings, and more than one real
# token per label on decoders (whose tokenizer adds no special tokens), which softmax pooling needs.
LABEL_NAMES = ["negative", "positive"]
LABEL_TEXTS = ["negative sentiment", "the sentiment is positive"]
TEXTS = ["the movie was very good", "bad plot", "i loved it", "awful boring film", "great actors and story",
         "it was dull", "wonderful", "not good"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]


def make_model(backbone, method: str, label_length: int | None = None, **options) -> LTuningModel:
    """The paper's recipe unless ``score_head`` says otherwise (A.5's counts are the paper head's)."""
    options.setdefault("score_head", "paper")
    cfg = LTuningConfig(method=method, base_model=backbone.name, label_names=LABEL_NAMES,
                        label_texts=LABEL_TEXTS, label_length=label_length, **options)
    return LTuningModel(backbone, cfg)


def config_dims(backbone) -> dict:
    """m, d, n_kv, d_h read straight from the transformers config of the tiny model."""
    c = backbone.model.config
    n_heads = c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    d_h = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    return {"m": c.num_hidden_layers, "d": c.hidden_size, "n_kv": n_kv, "d_h": d_h}


def one_loss(model: LTuningModel) -> torch.Tensor:
    batch = model.tokenize(TEXTS[:4])
    labels = torch.tensor(LABELS[:4])
    label_ids = torch.tensor([1, 0, 0, 1])  # two true pairs, two false pairs
    targets = (label_ids == labels).long()
    return model.loss(batch, labels, label_ids, targets)


@pytest.mark.parametrize("method,options", [(m, {}) for m in METHOD_NAMES]
                         + [("lt-prefix", {"prefix_pooling": p}) for p in ("softmax", "raw")]
                         + [(m, {"score_head": "similarity"}) for m in ("lt-prefix", "lt-prompt")])
def test_gradients_reach_only_the_method(backbone, method, options):
    model = make_model(backbone, method, **options)
    model.train()
    similarity_start = options.get("score_head") == "similarity" and method == "lt-prefix"
    label_map = bool(getattr(model.method, "label_map_rank", None))  # lt-prefix's default map
    if similarity_start or label_map:
        # Z starts at zero (the head start), so F's first gradient, through Z, is zero; the label map's U starts
        # at zero, so V's first gradient, through U, is zero; after one update they are not: take one step first.
        first = one_loss(model)
        first.backward()
        if similarity_start:
            assert model.method.pool.weight.grad.abs().sum() == 0
        if label_map:
            assert model.method.label_down.weight.grad.abs().sum() == 0
        torch.optim.SGD(model.trainable_parameters(), lr=0.1).step()
        model.method.zero_grad()
    loss = one_loss(model)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in backbone.named_parameters():
        assert not p.requires_grad, f"backbone parameter {name} is trainable"
        assert p.grad is None, f"backbone parameter {name} received a gradient"
    method_params = dict(model.method.named_parameters())
    assert method_params, "the method has no parameters"
    for name, p in method_params.items():
        assert p.requires_grad, name
        assert p.grad is not None, f"method parameter {name} got no gradient"
        assert p.grad.abs().sum() > 0, f"method parameter {name} got an all-zero gradient"
    # trainable_parameters() is exactly the method's parameters
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in method_params.values()}
    # and the label encodings are cached buffers, not parameters
    assert not model.label_states.requires_grad


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_training_changes_only_the_method(backbone, method):
    model = make_model(backbone, method)
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    method_before = {k: v.clone() for k, v in model.method.state_dict().items()}
    labels_before = model.label_states.clone()
    data = TextDataset(TEXTS, LABELS, LABEL_NAMES)
    train(model, data, None, TrainArgs(max_steps=2, batch_size=4, warmup_ratio=0.0, progress=False))
    after = backbone.state_dict()
    assert after.keys() == backbone_before.keys()
    for k, v in backbone_before.items():
        assert torch.equal(after[k], v), f"backbone weight {k} changed during training"
    assert torch.equal(model.label_states, labels_before)
    changed = [k for k, v in model.method.state_dict().items() if not torch.equal(v, method_before[k])]
    assert changed == list(method_before), f"only {changed} of {list(method_before)} were updated"


def expected_count(method: str, m: int, d: int, n_kv: int, d_h: int, l: int, K: int,
                   score_head: str = "paper") -> int:
    d_kv = n_kv * d_h
    similarity = d * d + 2 if score_head == "similarity" else 0  # W: d*d, scale s and bias b
    head = 0 if score_head == "cosine" else 2 * d  # C_zeta: Linear(d, 2); the cosine head has none
    if method == "lt-prefix":  # F: d, Z: l * 2*m*l*d_kv
        return 2 * l * l * m * d_kv + d + head + similarity
    if method == "lt-prompt":  # G: d*d
        return d * d + head + similarity
    if method == "prefix":  # (l, 2*m*d_kv) keys/values + K-way head
        return 2 * l * m * d_kv + d * K
    if method == "prompt":  # (l, d) soft prompt + K-way head
        return d * (l + K)
    raise AssertionError(method)


@pytest.mark.parametrize("label_length", [None, 6])
@pytest.mark.parametrize("method, score_head", [(m, h) for m in METHOD_NAMES for h in ("paper", "similarity", "cosine")
                                                if m.startswith("lt-") or h == "paper"])  # classic: a K-way head
def test_parameter_count_matches_paper(backbone, method, label_length, score_head):
    model = make_model(backbone, method, label_length, score_head=score_head, label_map_rank=0)  # the paper's
    dims = config_dims(backbone)
    K = len(LABEL_NAMES)
    if label_length is None:  # the longest tokenized label text
        l = max(len(backbone.tokenizer(t)["input_ids"]) for t in LABEL_TEXTS)
    else:
        l = label_length
    assert model.config.label_length == l
    expected = expected_count(method, l=l, K=K, score_head=score_head, **dims)
    assert model.num_trainable_parameters() == expected
    assert sum(p.numel() for p in model.method.parameters()) == expected
    # the method's own formula agrees with the independent count
    assert METHODS[method].formula(backbone.dims, l, K, score_head)[1] == expected


def test_paper_formulas_on_mha_bert():
    """The paper's own expressions (A.5) on tiny BERT, where d_kv == d."""
    from conftest import tiny_bert

    from ltuning.backbones import Backbone

    bb = Backbone(*tiny_bert(), name="tiny-bert")
    c = bb.model.config
    m, d, K, l = c.num_hidden_layers, c.hidden_size, 2, 5
    assert (c.num_attention_heads * (d // c.num_attention_heads)) == d  # plain MHA: d_kv = d
    counts = {name: make_model(bb, name, l, label_map_rank=0).num_trainable_parameters() for name in METHOD_NAMES}
    assert counts["lt-prefix"] == 2 * l ** 2 * m * d + 3 * d == 2 * 25 * 2 * 32 + 96
    assert counts["lt-prompt"] == d ** 2 + 2 * d == 32 * 32 + 64
    assert counts["prompt"] == d * (l + K) == 32 * 7
    assert counts["prefix"] == 2 * l * m * d + d * K


def test_gqa_llama_counts_use_d_kv():
    """On the GQA tiny Llama (4 query heads, 2 key/value heads) the prefix is sized by d_kv, not d."""
    from conftest import tiny_llama

    from ltuning.backbones import Backbone

    bb = Backbone(*tiny_llama(), name="tiny-llama")
    c = bb.model.config
    m, d, l = c.num_hidden_layers, c.hidden_size, 5
    d_h = getattr(c, "head_dim", None) or d // c.num_attention_heads
    d_kv = c.num_key_value_heads * d_h
    assert d_kv == 16 and d == 32
    model = make_model(bb, "lt-prefix", l, label_map_rank=0)  # the paper's Z alone
    assert model.num_trainable_parameters() == 2 * l ** 2 * m * d_kv + 3 * d
    assert model.num_trainable_parameters() != 2 * l ** 2 * m * d + 3 * d
    assert model.injection().prefix.shape == (2, m, 2, c.num_key_value_heads, l, d_h)
    assert make_model(bb, "prefix", l).injection().prefix.shape == (1, m, 2, c.num_key_value_heads, l, d_h)
