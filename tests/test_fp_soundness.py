"""Floating-point soundness against the exact rational oracle (issue 15).

Property-based (hypothesis, derandomised): random networks with weights scaled by 10^-6 … 10^12,
depths up to 10, point inputs, thresholds at the exact real value of each safety row (margin
exactly 0 or one ulp either side). No analysis may return a lower bound above the real margin,
so none may say "verified" when the real margin is ≤ 0.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from absint.analyses import get_analysis
from absint.exact import exact_forward
from fp_cases import KINDS, PIECEWISE_LINEAR, assert_sound, point_input, scaled_net, threshold_rows

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

nets = st.builds(lambda kind, seed, depth, width, e: (kind, seed, depth, width, e),
                 st.sampled_from(KINDS), st.integers(0, 10 ** 6), st.integers(1, 10), st.integers(2, 6),
                 st.integers(-6, 12))


def _bound(name: str, graph, x, C, d, **options):
    an = get_analysis(name, device="cpu", **options)
    lo = torch.as_tensor(x[None])
    return an.bound(graph, lo, lo.clone(), torch.as_tensor(C[None]), torch.as_tensor(d[None])).lower[0]


@pytest.mark.parametrize("name", ["box", "deepzono"])
@FAST
@given(case=nets)
def test_domains_never_prove_past_the_exact_margin(name, case):
    kind, seed, depth, width, e = case
    g = scaled_net(kind, seed, depth, width, e)
    x = point_input(g, seed)
    C, d, margins = threshold_rows(g, x)
    assert_sound(_bound(name, g, x, C, d), margins, f"{name} on {case}")
