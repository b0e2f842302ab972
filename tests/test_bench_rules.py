"""The rule that picks each method's defaults from dev rows (benchmarks/render.py: ``default_choices``), and how
it reads the few-shot ablation variants of a configuration (``_is_variant``, ``DEFAULT_CONFIGS``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import render  # noqa: E402


@pytest.mark.parametrize("variant, kinds, expected", [
    ("head-prior-10-lr-3e-3", ("head-prior-10-lr-",), True),
    ("head-prior-10-lr-3e-3-steps-300", ("head-prior-10-lr-",), False),  # another budget: not this configuration
    ("head-prior-10-lr-3e-3-label-map-r8", ("head-prior-10-lr-",), False),
    ("head-prior-10-lr-3e-3-label-map-r8", ("head-prior-10-lr-{lr}-label-map-r8",), True),
    ("head-prior-10-lr-1e-2-label-map-r8", ("head-prior-10-lr-{lr}-label-map-r8",), True),
    ("head-prior-10-lr-3e-3-label-map-r32", ("head-prior-10-lr-{lr}-label-map-r8",), False),
    ("head-prior-10-lr-3e-3-label-map-r8-steps-25", ("head-prior-10-lr-{lr}-label-map-r8",), False),
    ("default", ("default", "lr-"), True),
    ("lr-0.01", ("default", "lr-"), True),
])
def test_which_ablation_variants_belong_to_a_configuration(variant, kinds, expected):
    assert bool(render._is_variant(variant, kinds)) is expected


def test_configuration_names():
    assert render._config_options(("anchored", 8)) == ("anchored", 8)
    assert render._config_options("anchored") == ("anchored", None)
    assert render._config_name(("anchored", 8)) == "anchored + label map r=8"
    assert render._config_name(None) == "–"


def test_the_rule_takes_the_smallest_worst_shortfall_over_configurations_measured_everywhere():
    few, big = "few-shot dev", "sst2 dev"
    regimes = {
        ("m", "a"): [(few, {1e-3: 0.70, 3e-3: 0.77}), (big, {1e-3: 0.85, 3e-3: 0.84})],
        ("m", ("a", 8)): [(few, {3e-3: 0.80}), (big, {3e-3: 0.83, 1e-2: 0.90})],  # 1e-2: not measured everywhere
    }
    chosen, short = render.default_choices(regimes)["m"]
    # bests over the pairs measured everywhere: few 0.80, sst2 0.85 (1e-2 at 0.90 is not one of them)
    assert short == pytest.approx({("a", 1e-3): 0.10, ("a", 3e-3): 0.03, (("a", 8), 3e-3): 0.02})
    assert chosen == (("a", 8), 3e-3)


def test_every_benchmark_lt_prefix_build_names_its_label_map():
    """The library's default became a map (r = 8); a stored row that does not name the map ran without one, so a
    rerun must build it without one (0), and a row that names it with its rank."""
    import common
    import converged

    assert common.label_map("lt-prefix") == {"label_map_rank": 0}
    assert common.label_map("lt-prefix", 8) == {"label_map_rank": 8}
    assert common.label_map("prefix") == {} and common.label_map("lt-prompt", 8) == {}
    assert converged.parse_row("lt-prefix-anchored-listwise") == ("lt-prefix", "listwise", "anchored",
                                                                  {"label_map_rank": 0})
    assert converged.parse_row("lt-prefix-label-map-anchored-listwise") == (
        "lt-prefix", "listwise", "anchored", {"label_map_rank": common.LABEL_MAP_RANK})
    assert converged.parse_row("prefix") == ("prefix", "listwise", "paper", {})  # its K-way head


def test_the_library_default_row_of_the_rule_table_is_lt_prefix_with_its_label_map():
    from ltuning.methods import METHODS

    lr = METHODS["lt-prefix"].learning_rate_for("anchored")
    search = [{"method": conv, "task": t, "learning_rate": lr, "best_dev_metric": 0.5}
              for conv in ("lt-prefix-anchored-listwise", "lt-prefix-label-map-anchored-listwise")
              for t in render.CONVERGED_TASKS]
    rows = [line for line in render.default_lr_table(search, []).splitlines() if line.startswith("| lt-prefix |")]
    marked = [line for line in rows if "library default" in line]
    assert len(marked) == 1 and "anchored + label map r=8" in marked[0]


def test_the_timing_table_pairs_each_cell_with_setfits_and_counts_reproduced_cells():
    """fewshot_timing.py's pairs: per (shots, dataset) the mean CPU seconds and the mean of the per-pair ratios,
    then every dataset of that shot count together; and how many timed cells scored the stored cell's accuracy."""
    def pair(dataset, ours, theirs, same=True):
        cell = lambda train, acc: {"train_seconds": {"cpu": train}, "predict_seconds": {"cpu": 5.0},  # noqa: E731
                                   "accuracy": acc, "stored_accuracy": acc if same else acc + 0.002,
                                   "load_before": [1.0], "load_after": [2.0]}
        return {"dataset": dataset, "shots": 8, "order": ["setfit", "lt-prefix-label-map"] if same else
                ["lt-prefix-label-map", "setfit"], "cells": {"lt-prefix-label-map": cell(ours, 0.7),
                                                            "setfit": cell(theirs, 0.6)}}

    table = render.fewshot_timing_table([pair("sst2", 50, 100), pair("sst2", 90, 100), pair("trec", 300, 100,
                                                                                           same=False)])
    lines = table.splitlines()
    assert "| 8 | sst2 | 2 | 70 | 100 | 0.70x (0.50-0.90) | 5.0 | 5.0 |" in lines
    assert "| 8 | trec | 1 | 300 | 100 | 3.00x (3.00-3.00) | 5.0 | 5.0 |" in lines
    assert "| **8** | **all** | 3 | 147 | 100 | 1.47x (0.50-3.00) | 5.0 | 5.0 |" in lines
    assert "4 of 6 timed cells scored exactly" in table and "1.0-2.0" in table and "first in 1 of 3 pairs" in table
    assert render.fewshot_timing_table([]).startswith("No timing pairs yet")


def test_timing_pairs_alternate_which_method_runs_first():
    """Seeds 0 and 1 give every (dataset, shots) one pair of each order, and neighbouring datasets differ."""
    import fewshot
    import fewshot_timing

    for d in fewshot.DATASETS:
        assert fewshot_timing.first_is_ours(d, 0) != fewshot_timing.first_is_ours(d, 1)
    firsts = [fewshot_timing.first_is_ours(d, 0) for d in fewshot.DATASETS]
    assert all(a != b for a, b in zip(firsts, firsts[1:], strict=False))


def test_the_held_back_summary_has_one_line_per_held_back_task_with_paired_wins():
    """multitask_parts_table's summary: per (training tasks, held-back task) the means over seeds of the frozen
    cosine, the trained head and the head at start (dev rows in brackets, only from records that have them), and
    the seeds where the head at start beats the frozen cosine."""
    parts = lambda trained, head: {"trained": trained, "head-at-start": head, "W-at-start": head,  # noqa: E731
                                   "prefix-at-start": 0.5, "both-at-start": 0.6}

    def run(tasks, held, seed, cos, trained, head, dev=None):
        held_rec = {"zero-shot-cosine": {"accuracy": cos}, "parts": parts(trained, head), "rows": 500}
        if dev is not None:
            held_rec["dev"] = {"rows": 500, "zero-shot-cosine": dev[0], "parts": parts(dev[1], dev[2])}
        return {"backbone": "minilm", "tasks": tasks, "held_out": held, "seed": seed, "steps": 600,
                "score_head": "anchored", "label_map_rank": 8, "learning_rate": 3e-3, "batch_size": 16,
                "held_out_task": held_rec}

    table = render.multitask_parts_table([
        run(["demo", "trec"], "sms-spam", 0, 0.6, 0.5, 0.7, dev=(0.6, 0.5, 0.65)),
        run(["demo", "trec"], "sms-spam", 1, 0.6, 0.6, 0.5, dev=(0.6, 0.7, 0.55)),
        run(["demo", "sms-spam"], "trec", 0, 0.4, 0.3, 0.5)])
    lines = table.splitlines()
    assert "| demo + trec, 600 steps | sms-spam | 0, 1 | 0.600 (0.600) | 0.550 (0.600) | 0.600 (0.600) | 1 of 2, " \
           "1 of 2 |" in lines
    assert "| demo + sms-spam, 600 steps | trec | 0 | 0.400 | 0.300 | 0.500 | 1 of 1, no dev rows |" in lines
    one_task = render.multitask_parts_table([run(["demo", "trec"], "sms-spam", 0, 0.6, 0.5, 0.7)])
    assert "paired wins" not in one_task and "| 0 | 0.600 | 0.500 | 0.700 |" in one_task
