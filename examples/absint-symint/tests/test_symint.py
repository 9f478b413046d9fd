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


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e3, 1e12])
def test_rounding_is_accounted_for_at_every_magnitude(scale) -> None:
    # Point inputs, threshold at the exact rational output (absint.exact): the real margin is ≤ 0,
    # so no lower bound may be positive, whatever the magnitude of the weights.
    from fractions import Fraction

    from absint.exact import exact_forward
    from absint.testing import random_mlp

    for seed in range(4):
        g = random_mlp(seed, (3, 8, 8, 8, 2))
        nodes = tuple(n if not isinstance(n, Affine) else Affine(n.name, n.inputs, n.shape,
                      DenseOperator((n.operator.weight * scale).float().double()), (n.bias * scale).float().double())
                      for n in g.nodes)
        g = Graph(nodes, g.output)
        x = np.random.default_rng(seed).uniform(-1, 1, 3).astype(np.float32).astype(np.float64)
        y0 = exact_forward(g, x)[0][0]
        d = float(-y0)
        if Fraction(d) > -y0:
            d = float(np.nextafter(d, -np.inf))
        C = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
        for relu in ("reluval", "neurify"):
            an = absint.get_analysis("symint", device="cpu", domain_options=SymIntOptions(relu=relu))
            lo = torch.as_tensor(x[None])
            lb = float(an.bound(g, lo - 1e-3, lo + 1e-3, C, torch.tensor([[d]], dtype=torch.float64)).lower[0, 0])
            assert Fraction(lb) <= y0 + Fraction(d), (scale, seed, relu, lb)
            lb = float(an.bound(g, lo, lo, C, torch.tensor([[d]], dtype=torch.float64)).lower[0, 0])
            assert Fraction(lb) <= y0 + Fraction(d), (scale, seed, relu, lb)
