"""Per-neuron relaxations, tested by sampling without any network (domains/relaxations.py)."""
from __future__ import annotations

import pytest
import torch

from absint.domains import relaxations as R

TOL = 1e-9


def _intervals(seed: int, n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Random intervals: unstable, stable on either side, touching 0, tiny and wide ones."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64) * 4
    w = torch.rand(n, generator=g, dtype=torch.float64) * 6
    w[: n // 10] *= 1e-9  # nearly degenerate
    l, u = a - w / 2, a + w / 2
    l[n // 10: n // 10 + 50], u[n // 10 + 50: n // 10 + 100] = 0.0, 0.0  # l = 0 or u = 0
    return torch.minimum(l, u), torch.maximum(l, u)


def _points(l: torch.Tensor, u: torch.Tensor, seed: int, m: int = 64) -> torch.Tensor:
    """``m`` points per interval, the two endpoints included: ``[m, n]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(m, l.shape[0], generator=g, dtype=torch.float64)
    t[0], t[1] = 0.0, 1.0
    return l + t * (u - l)


def _check_lines(lines: R.LinearBounds, f, l, u, seed) -> None:
    x = _points(l, u, seed)
    y = f(x)
    lo = lines.lower_slope * x + lines.lower_offset
    hi = lines.upper_slope * x + lines.upper_offset
    assert torch.all(lo <= y + TOL * (1 + y.abs())), float((lo - y).max())
    assert torch.all(y <= hi + TOL * (1 + y.abs())), float((y - hi).max())


@pytest.mark.parametrize("mode", ["area", "zero", "one", "parallel"])
@pytest.mark.parametrize("seed", range(3))
def test_relu_deeppoly_lines_are_sound(mode, seed):
    l, u = _intervals(seed)
    lines = R.relu_deeppoly(l, u, mode)
    _check_lines(lines, torch.relu, l, u, seed)
    assert torch.all((lines.lower_slope >= 0) & (lines.lower_slope <= 1))


def test_relu_stable_neurons_are_exact():
    l = torch.tensor([1.0, -3.0, 0.0, -2.0], dtype=torch.float64)
    u = torch.tensor([2.0, -1.0, 4.0, 0.0], dtype=torch.float64)
    lines = R.relu_deeppoly(l, u)
    assert lines.upper_slope.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert lines.lower_slope.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert lines.upper_offset.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(3))
def test_s_shaped_deeppoly_lines_are_sound(name, seed):
    l, u = _intervals(seed)
    fn = getattr(R, f"{name}_deeppoly")
    _check_lines(fn(l, u), getattr(torch, name), l, u, seed)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(3))
def test_zonotope_transformers_are_sound(name, seed):
    """``f(x) ∈ [λx + μ − β, λx + μ + β]`` for every ``x ∈ [l, u]``."""
    l, u = _intervals(seed)
    lam, mu, beta = getattr(R, f"{name}_zonotope")(l, u)
    assert torch.all(beta >= 0)
    x = _points(l, u, seed)
    y = getattr(torch, name)(x)
    centre = lam * x + mu
    assert torch.all((y - centre).abs() <= beta + TOL * (1 + y.abs())), float(((y - centre).abs() - beta).max())


@pytest.mark.parametrize("padding", [(0, 0), (1, 1)])
@pytest.mark.parametrize("seed", range(3))
def test_maxpool_deeppoly_lines_are_sound(padding, seed):
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = 2, 3, 5, 5
    centre = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    width = torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * torch.where(
        torch.rand(B, C, H, W, generator=g) < 0.5, 0.05, 2.0).to(torch.float64)
    l, u = centre - width, centre + width
    kernel, stride = (2, 2), (2, 2) if padding == (0, 0) else (1, 1)
    lines = R.maxpool_deeppoly(l, u, kernel, stride, padding)
    xs = l + torch.rand(200, B, C, H, W, generator=g, dtype=torch.float64) * (u - l)
    for x in xs:
        y = torch.nn.functional.max_pool2d(x, kernel, stride, padding).reshape(B, -1)
        chosen = x.reshape(B, -1).gather(1, lines.index)
        assert torch.all(chosen <= y + TOL)  # lower line y ≥ x_{j*}
        assert torch.all(y <= lines.upper.reshape(B, -1) + TOL)
        assert torch.all(y >= lines.lower.reshape(B, -1) - TOL)
        assert torch.all(torch.where(lines.exact, (y - chosen).abs(), torch.zeros_like(y)) <= TOL)
    assert bool(lines.exact.any())  # the narrow windows make some entries dominate
