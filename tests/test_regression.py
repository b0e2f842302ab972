"""Stored values: a seeded tiny run per method whose final training loss and label scores are pinned, so a
refactor that changes the numbers (initialisation, pair sampling, the loss, the score head, the order of
random draws) fails here. A change that should move them: rerun with LTUNING_PRINT_PINNED=1 -s, check why
they moved, and paste the new values."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_bert

from ltuning.backbones import Backbone
from ltuning.config import LTuningConfig
from ltuning.data import TextDataset
from ltuning.model import LTuningModel
from ltuning.train import TrainArgs, train

TRAIN = [("the movie was very good", 1), ("bad plot", 0), ("i loved it", 1), ("awful boring film", 0),
         ("great actors and story", 1), ("it was dull", 0), ("wonderful", 1), ("not good", 0),
         ("a fun film", 1), ("i hated the story", 0), ("really great", 1), ("terrible acting", 0),
         ("the plot was fun", 1), ("quite boring", 0), ("i am wowed", 1), ("this was awful", 0)]
PROBE = ["what a wonderful film", "boring and dull", "the actors were great"]

# (config, training objective): the pairwise cases were pinned when pairwise was the default objective
CASES = {
    "lt-prefix-paper": (dict(method="lt-prefix", score_head="paper", label_map_rank=0), "pairwise"),
    "lt-prefix-similarity": (dict(method="lt-prefix", score_head="similarity", label_map_rank=0), "pairwise"),
    "lt-prefix-similarity-listwise": (dict(method="lt-prefix", score_head="similarity", label_map_rank=0), "listwise"),
    "prefix": (dict(method="prefix", score_head="paper"), "listwise"),  # the classic methods take paper only
}

# printed by a first run (LTUNING_PRINT_PINNED=1; one torch thread, see run()): the last step's training loss,
# and score_texts(PROBE)
PINNED = {
    "lt-prefix-paper": (0.6931549310684204, [[0.009483840316534042, 0.00922299548983574],
                                             [0.009310606867074966, 0.00901833176612854],
                                             [0.009194742888212204, 0.00893545150756836]]),
    "lt-prefix-similarity-listwise": (0.6932098865509033, [[14.676383972167969, 14.696496963500977],
                                                           [14.677099227905273, 14.695915222167969],
                                                           [14.68060302734375, 14.700532913208008]]),
    "lt-prefix-similarity": (4.434372901916504, [[8.602751731872559, 8.54611873626709],
                                                 [8.605828285217285, 8.544177055358887],
                                                 [8.607695579528809, 8.55089282989502]]),
    "prefix": (0.693462610244751, [[0.010446842759847641, 0.06110341474413872],
                                   [0.010456234216690063, 0.06114187091588974],
                                   [0.010648705065250397, 0.06097240746021271]]),
}


def run(case: str) -> tuple[float, torch.Tensor]:
    # One thread: the order of float sums depends on the thread count, and Adam turns near-zero gradients'
    # rounding into whole steps, so pins taken with 2 threads were off by 7e-4 under OMP_NUM_THREADS=1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(case)
    finally:
        torch.set_num_threads(threads)


def _run(case: str) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)  # the backbone's random weights, then the method's initialisation
    model = LTuningModel(Backbone(*tiny_bert(), name="tiny-bert"),
                         LTuningConfig(label_names=["negative", "positive"], **CASES[case][0]))
    data = TextDataset([t for t, _ in TRAIN], [y for _, y in TRAIN], ["negative", "positive"])
    # lr 1e-2: every method's default when the values were pinned (each method has its own default now)
    result = train(model, data, None, TrainArgs(max_steps=8, batch_size=4, learning_rate=1e-2, seed=0,
                                                progress=False, objective=CASES[case][1]))
    with torch.no_grad():
        scores = model.eval().score_texts(PROBE)
    return result.train_log[-1]["loss"], scores


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_tiny_run_gives_the_stored_numbers(case):
    loss, scores = run(case)
    assert scores.shape == (len(PROBE), 2)
    if os.environ.get("LTUNING_PRINT_PINNED"):
        print(f"\n    {case!r}: ({loss!r}, {scores.tolist()!r}),")
    want_loss, want_scores = PINNED[case]
    torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), torch.tensor(want_loss, dtype=torch.float64),
                               atol=1e-5, rtol=1e-4)
    want = torch.tensor(want_scores, dtype=scores.dtype)
    if CASES[case][1] == "listwise":
        # A listwise loss does not see an offset common to every score, so the similarity head's bias b gets a
        # gradient of pure rounding noise, which Adam scales to a full step of either sign: b, and so every
        # score, drifts by a machine-dependent constant (0.009 here on two CPUs). What the model predicts is
        # the scores relative to each other: pin those, and the offset loosely.
        torch.testing.assert_close(scores - scores[:1, :1], want - want[:1, :1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(scores, want, atol=0.1, rtol=0)
    else:
        torch.testing.assert_close(scores, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method, lr", [("lt-prefix", 3e-3), ("lt-prompt", 3e-3), ("prefix", 3e-2),
                                        ("prompt", 3e-2)])
def test_without_a_learning_rate_each_method_trains_at_its_own_default(method, lr):
    torch.manual_seed(0)
    model = LTuningModel(Backbone(*tiny_bert(), name="tiny-bert"),
                         LTuningConfig(method=method, label_names=["negative", "positive"]))
    data = TextDataset([t for t, _ in TRAIN], [y for _, y in TRAIN], ["negative", "positive"])
    result = train(model, data, None, TrainArgs(max_steps=1, batch_size=4, seed=0, progress=False))
    assert result.learning_rate == lr == model.method.default_learning_rate
