"""Tests of the absint-symint plugin (run after ``pip install ./examples/absint-symint``).

The conformance kit gives one pytest test per check with one line each; the rest checks what is
special about this domain (exact on linear dependencies, the ReLU rules) and that absint finds
the installed plugin by its entry point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import absint
from absint.ir import Affine, Graph, Input, Relu
from absint.linear import DenseOperator
from absint.testing import domain_conformance_tests
from absint_symint import SymIntDomain, SymIntOptions

torch.set_num_threads(1)

# The whole conformance kit, once per ReLU rule.
test_conformance = domain_conformance_tests(SymIntDomain)
test_conformance_neurify = domain_conformance_tests(SymIntDomain, options=SymIntOptions(relu="neurify"))


def _dense(name: str, src: str, w: list[list[float]], b: list[float] | None = None) -> Affine:
    wt = torch.tensor(w, dtype=torch.float64)
    bias = None if b is None else torch.tensor(b, dtype=torch.float64)
    return Affine(name, (src,), (wt.shape[0],), operator=DenseOperator(wt), bias=bias)


def test_entry_point_registers_the_domain() -> None:
    from absint import registry

    assert registry.available_domains().get("symint") is SymIntDomain
    assert registry.domain_origin("symint").startswith("absint-symint"), registry.domain_origin("symint")
    assert "symint" in absint.available_analyses()


def test_keeps_input_dependencies_where_box_cannot() -> None:
    # y = x1 - x1 is exactly 0; intervals give [-2, 2], symbolic intervals give [0, 0] up to the
    # rounding margin (a few ulps of the equations' size, which is 1 here).
    g = Graph((Input("x", (), (1,)), _dense("a", "x", [[1.0], [1.0]]), _dense("y", "a", [[1.0, -1.0]])), "y")
    lo, hi = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    dom = SymIntDomain()
    out = absint.propagate(g, dom, lo, hi).output
    low, up = dom.bounds(out)
    assert -1e-13 < float(low) <= 0.0 <= float(up) < 1e-13


def test_relu_rules_of_reluval() -> None:
    # z = x0 + x1 on [-1, 1]^2 is unstable: lower equation -> 0, upper concretised to u = 2.
    g = Graph((Input("x", (), (2,)), _dense("z", "x", [[1.0, 1.0]]), Relu("r", ("z",), (1,))), "r")
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    el = absint.propagate(g, SymIntDomain(), lo, hi).output
    assert torch.count_nonzero(el.low.w) == 0 and float(el.low.c) == 0.0
    assert torch.count_nonzero(el.up.w) == 0 and float(el.up.c) == pytest.approx(2.0, rel=1e-13)
    assert float(el.up.c) >= 2.0  # rounded outward, never inward
    # Neurify keeps a symbolic upper line: the chord 0.5·(z + 2).
    el = absint.propagate(g, SymIntDomain(SymIntOptions(relu="neurify")), lo, hi).output
    assert torch.allclose(el.up.w.flatten(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert float(el.up.c) == pytest.approx(1.0)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        SymIntOptions(relu="nope")


def _bundled() -> Path:
    from absint.cli import DEFAULT_DATA, DEFAULT_NETWORK

    if not (DEFAULT_NETWORK.exists() and DEFAULT_DATA.exists()):
        pytest.skip("bundled networks not present (absint not installed from a source tree)")
    return DEFAULT_NETWORK


def test_verify_by_name_is_at_least_as_precise_as_box() -> None:
    from absint.cli import DEFAULT_DATA

    net = absint.load_network(_bundled())
    images, labels = absint.load_images(DEFAULT_DATA, tuple(net.input_shape))
    kw = dict(eps=0.02, attack=False, batch_size=10)
    sym = absint.verify_robustness(net, images[:10], labels[:10], analysis="symint", **kw)
    box = absint.verify_robustness(net, images[:10], labels[:10], analysis="box", **kw)
    assert sum(r.verified for r in sym) >= sum(r.verified for r in box)
    assert sum(r.verified for r in sym) > 0
    for s, b in zip(sym, box):
        assert not (b.verified and not s.verified)


def test_cli_verify_uses_the_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    from absint.cli import main

    assert main(["verify", str(_bundled()), "-a", "symint", "-n", "3", "--no-attack", "-q"]) == 0
    assert main(["list"]) == 0
    assert "symint" in capsys.readouterr().out


def test_single_point_box_is_exact() -> None:
    g = Graph((Input("x", (), (2,)), _dense("z", "x", [[1.0, -2.0], [0.5, 1.0]], [0.1, -3.0]),
               Relu("r", ("z",), (2,))), "r")
    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    dom = SymIntDomain()
    lo, hi = dom.bounds(absint.propagate(g, dom, x, x).output)
    y = g.forward(x)
    np.testing.assert_allclose(lo.numpy(), y.numpy(), atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), y.numpy(), atol=1e-12)


def _scaled_mlp(seed: int, depth: int, width: int, exponent: int) -> Graph:
    """A random ReLU MLP ``3 → width×depth → 2`` whose weights and biases are float32 numbers ×10^exponent."""
    from absint.testing import random_mlp

    g = random_mlp(seed, (3,) + (width,) * depth + (2,), bias_scale=1.0)
    f32 = lambda t: (t * 10.0 ** exponent).float().double()  # noqa: E731
    return Graph(tuple(n if not isinstance(n, Affine) else
                       Affine(n.name, n.inputs, n.shape, DenseOperator(f32(n.operator.weight)), f32(n.bias))
                       for n in g.nodes), g.output)


def _thresholds_at(value) -> list[float]:
    """``d0 − ulp, d0, d0 + ulp`` with ``d0`` the largest float such that ``value + d0 ≤ 0`` (exactly)."""
    from fractions import Fraction

    d0 = float(-value)
    if Fraction(d0) > -value:
        d0 = float(np.nextafter(d0, -np.inf))
    return [float(np.nextafter(d0, -np.inf)), d0, float(np.nextafter(d0, np.inf))]


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10 ** 6), depth=st.integers(1, 10), width=st.integers(2, 8), exponent=st.integers(-6, 12),
       relu=st.sampled_from(["reluval", "neurify"]))
def test_rounding_is_accounted_for_at_every_magnitude(seed, depth, width, exponent, relu) -> None:
    # Rows y0 and y0 − y1 with thresholds at their exact rational value at x (absint.exact) and one
    # ulp either side: no lower bound may exceed the real margin at x (a point of every box below),
    # whatever the magnitude of the weights; so symint never verifies what is false in real arithmetic.
    from fractions import Fraction

    from absint.exact import exact_forward

    g = _scaled_mlp(seed, depth, width, exponent)
    x = np.random.default_rng(seed).uniform(-1, 1, 3).astype(np.float32).astype(np.float64)
    y = [v[0] for v in exact_forward(g, x)]
    rows = []
    for c, value in (([1.0, 0.0], y[0]), ([1.0, -1.0], y[0] - y[1])):
        rows += [(c, d, value + Fraction(d)) for d in _thresholds_at(value)]
    C = torch.tensor([[r[0] for r in rows]], dtype=torch.float64)
    d = torch.tensor([[r[1] for r in rows]], dtype=torch.float64)
    an = absint.get_analysis("symint", device="cpu", domain_options=SymIntOptions(relu=relu))
    xt = torch.as_tensor(x[None])
    for r in (0.0, 2.0 ** -20):
        lb = an.bound(g, xt - r * (xt.abs() + 1), xt + r * (xt.abs() + 1), C, d).lower[0]
        for i, (_, _, margin) in enumerate(rows):
            assert Fraction(float(lb[i])) <= margin, (i, float(lb[i]), float(margin))
