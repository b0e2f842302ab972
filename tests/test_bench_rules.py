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
