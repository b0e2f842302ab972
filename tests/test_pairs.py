"""PairSampler (A.3): half true pairs, half false pairs with a wrong label; seeded and resumable."""

from __future__ import annotations

import pytest
import torch

from ltuning.pairs import PairSampler


def labels_for(n: int, K: int) -> list[int]:
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, K, (n,), generator=g).tolist()


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("indices", "label_ids", "targets", "labels"))


@pytest.mark.parametrize("K", [2, 5])
def test_half_true_half_false_and_never_a_false_label_equal_to_the_truth(K):
    labels = labels_for(103, K)
    B = 8
    sampler = PairSampler(labels, K, B, seed=3)
    all_labels = torch.tensor(labels)
    wrong_seen = torch.zeros(K, K, dtype=torch.long)  # [true][paired wrong label]
    for _ in range(200):  # ~15 epochs
        pb = sampler.next()
        assert pb.indices.shape == pb.label_ids.shape == pb.targets.shape == pb.labels.shape == (B,)
        assert len(set(pb.indices.tolist())) == B  # distinct texts in a batch
        assert torch.equal(pb.labels, all_labels[pb.indices])
        assert int(pb.targets.sum()) == B // 2  # half true, half false
        pos, neg = pb.targets == 1, pb.targets == 0
        assert torch.equal(pb.label_ids[pos], pb.labels[pos])
        assert (pb.label_ids[neg] != pb.labels[neg]).all()
        assert ((pb.label_ids >= 0) & (pb.label_ids < K)).all()
        for y, j in zip(pb.labels[neg].tolist(), pb.label_ids[neg].tolist(), strict=False):
            wrong_seen[y, j] += 1
    # every wrong label of every class is drawn (uniform over the K - 1 wrong ones), never the true one
    off_diagonal = ~torch.eye(K, dtype=torch.bool)
    assert (wrong_seen.diagonal() == 0).all()
    present = torch.tensor(sorted(set(labels)))
    assert (wrong_seen[present][off_diagonal[present]] > 0).all()


def test_odd_batch_has_one_more_true_pair():
    sampler = PairSampler(labels_for(50, 3), 3, 7, seed=0)
    for _ in range(20):
        pb = sampler.next()
        assert int(pb.targets.sum()) == 4 and int((pb.targets == 0).sum()) == 3


def test_each_epoch_visits_every_text_once():
    n, B = 40, 8
    sampler = PairSampler(labels_for(n, 2), 2, B, seed=1)
    for _ in range(3):
        seen = torch.cat([sampler.next().indices for _ in range(n // B)])
        assert sorted(seen.tolist()) == list(range(n))


def test_same_seed_same_batches_other_seed_other_batches():
    labels = labels_for(60, 5)
    a, b, c = (PairSampler(labels, 5, 8, seed=s) for s in (7, 7, 8))
    batches_a = [a.next() for _ in range(30)]
    batches_b = [b.next() for _ in range(30)]
    batches_c = [c.next() for _ in range(30)]
    assert all(same(x, y) for x, y in zip(batches_a, batches_b, strict=False))
    assert not all(same(x, y) for x, y in zip(batches_a, batches_c, strict=False))


@pytest.mark.parametrize("stop", [0, 3, 7, 13])  # 7 batches of 8 = one epoch of 57 texts: resume across it
def test_state_dict_round_trip_resumes_identically(stop):
    labels = labels_for(57, 5)
    ref = PairSampler(labels, 5, 8, seed=11)
    for _ in range(stop):
        ref.next()
    state = ref.state_dict()
    expected = [ref.next() for _ in range(20)]

    resumed = PairSampler(labels, 5, 8, seed=0)  # a different seed, replaced by the state's
    resumed.load_state_dict(dict(state))
    got = [resumed.next() for _ in range(20)]
    assert all(same(x, y) for x, y in zip(expected, got, strict=False))
    assert resumed.state_dict() == ref.state_dict()


def test_rejects_fewer_than_two_labels_or_tiny_batches():
    with pytest.raises(ValueError, match="2 labels"):
        PairSampler([0, 0, 0], 1, 4)
    with pytest.raises(ValueError, match="batch size"):
        PairSampler([0, 1, 0], 2, 1)
