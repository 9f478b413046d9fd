"""Floating-point soundness against the exact rational oracle (issue 15).

Property-based (hypothesis, derandomised): random networks with weights scaled by 10^-6 … 10^12,
depths up to 10, point inputs or tiny boxes, thresholds at the exact real value of each safety row
(margin exactly 0, or one ulp either side). No analysis may return a lower bound above the real
margin, so none may say "verified" when the real margin is ≤ 0. Every analysis is covered, the
refinement presets both with their defaults and over Box/DeepZ bounds.
"""
from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import absint
from absint.analyses import get_analysis
from absint.specs import Clause, InputBox, Instance, OutputProperty
from fp_cases import KINDS, PIECEWISE_LINEAR, assert_sound, exact_rows, point_input, scaled_net, threshold_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fp_issue_cases import big_weight_case, relu_net, threshold_at_exact  # noqa: E402

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _nets(kinds=KINDS, depth=10):
    return st.tuples(st.sampled_from(kinds), st.integers(0, 10 ** 6), st.integers(1, depth), st.integers(2, 6),
                     st.integers(-6, 12))


def _bound(name: str, graph, lo, hi, C, d, **options) -> np.ndarray:
    an = get_analysis(name, device="cpu", **options)
    return an.bound(graph, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]), torch.as_tensor(C[None]),
                    torch.as_tensor(d[None])).lower[0]


def _check_point(name: str, case, **options) -> None:
    g = scaled_net(*case)
    x = point_input(g, case[1])
    C, d, margins = threshold_rows(g, x)
    assert_sound(_bound(name, g, x, x, C, d, **options), margins, f"{name} {options} on {case}")


def _check_tiny_box(name: str, case, **options) -> None:
    """A box of relative width 2^-20 around x: the bound must be below the exact margin at the
    centre and at two opposite corners (each a point of the box)."""
    g = scaled_net(*case)
    x = point_input(g, case[1])
    r = np.abs(x) * 2.0 ** -20 + 2.0 ** -40
    lo, hi = x - r, x + r
    C, d, _ = threshold_rows(g, x)
    lb = _bound(name, g, lo, hi, C, d, **options)
    for p in (x, lo, hi):
        margins = [v[1] + Fraction(float(dd)) for v, dd in zip(exact_rows(g, p, C), d)]
        assert_sound(lb, margins, f"{name} {options} on a box around {case}")


@pytest.mark.parametrize("name", ["box", "deepzono", "deeppoly"])
@FAST
@given(case=_nets())
def test_domains_never_prove_past_the_exact_margin(name, case):
    _check_point(name, case)
    _check_tiny_box(name, case)


@pytest.mark.parametrize("name,options", [
    ("lp", {"domain": "deepzono"}), ("milp", {"domain": "deepzono", "slopes": False}),
    ("refinezono", {}), ("lp", {"domain": "box"})], ids=["lp-zono", "milp-zono", "refinezono", "lp-box"])
@FEW
@given(case=_nets(PIECEWISE_LINEAR, depth=4))
def test_lp_and_milp_never_prove_past_the_exact_margin(name, options, case):
    _check_point(name, case, **options)
    _check_tiny_box(name, case, **options)


@FEW
@given(case=_nets(depth=4))
def test_alphapoly_never_proves_past_the_exact_margin(case):
    _check_point("alphapoly", case)
    _check_tiny_box("alphapoly", case)


@FEW
@given(case=_nets(PIECEWISE_LINEAR, depth=4))
def test_bab_relu_splitting_never_proves_past_the_exact_margin(case):
    _check_tiny_box("bab", case, split="relu", attack=False, max_depth=6)


@pytest.mark.parametrize("name", ["lp", "milp", "refinepoly", "kpoly"])
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=_nets(PIECEWISE_LINEAR, depth=3))
def test_refinement_presets_never_prove_past_the_exact_margin(name, case):
    _check_point(name, case)
    _check_tiny_box(name, case)


@pytest.mark.parametrize("name", ["sdp-fo", "sdp-exact"])
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=_nets(("dense", "residual"), depth=3))
def test_sdp_never_proves_past_the_exact_margin(name, case):
    opts = {"bounds": "box"} if name == "sdp-exact" else {"bounds": "box", "fo_options": {"iterations": 60}}
    _check_tiny_box(name, (case[0], case[1], case[2], min(case[3], 4), case[4]), **opts)


@pytest.mark.parametrize("domain", ["box", "deepzono"])
@FEW
@given(case=_nets(KINDS, depth=4))
def test_bab_input_splitting_never_proves_past_the_exact_margin(domain, case):
    _check_tiny_box("bab", case, split="input", domain=domain, attack=False, max_depth=6)


# -- the issue's reproduced cases, end to end through verify ------------------------------------
def _issue_instances():
    g, x, C, d = big_weight_case()
    yield "big-weights", g, x, C, d
    rng = np.random.default_rng(0)
    for s in range(3):
        g = relu_net(100 + s, (4, 10, 10, 10, 10, 10, 10, 2), 10.0 / math.sqrt(10))
        x = rng.uniform(-1, 1, 4)
        yield "deep-relu", g, x, *threshold_at_exact(g, x)
    for s in range(5):
        g = relu_net(1000 + s, (4, 10, 10, 2), 100.0)
        x = rng.uniform(-1, 1, 4)
        yield "scaled-100", g, x, *threshold_at_exact(g, x)


@pytest.mark.parametrize("analysis,options", [
    ("box", {}), ("deepzono", {}), ("deeppoly", {}), ("alphapoly", {}), ("lp", {"domain": "deepzono"}),
    ("refinezono", {}), ("bab", {}), ("lp", {}), ("milp", {}),
    ("sdp-fo", {"bounds": "box", "fo_options": {"iterations": 50}}), ("bab", {"split": "input", "domain": "box"})],
    ids=["box", "deepzono", "deeppoly", "alphapoly", "lp-zono", "refinezono", "bab", "lp", "milp", "sdp-fo",
         "bab-input"])
def test_issue_cases_are_never_verified(analysis, options):
    # real margin ≤ 0 at a point input (e.g. 2^40-weights: −3.05e-5 where float64 gives +3.05e-5)
    for case, g, x, C, d in _issue_instances():
        prop = OutputProperty((Clause(-C, -d),), C.shape[1])  # violation: −(C y + d) ≥ 0
        res = absint.verify(g, Instance(InputBox(x, x), prop), analysis=analysis, attack=False, **options)
        assert not res.verified, f"{analysis} verified {case}, whose real margin is ≤ 0"
