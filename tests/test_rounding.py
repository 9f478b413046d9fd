"""The rounding primitives bound real rounding errors (checked against exact rational sums)."""
from fractions import Fraction

import numpy as np
import torch

from absint.rounding import dot_error, gamma, safe_lower, safe_upper, sanitize_lower, sanitize_upper


def _exact_dot(x: np.ndarray, y: np.ndarray) -> Fraction:
    return sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, y)), Fraction(0))


def test_dot_error_covers_real_error_at_every_magnitude():
    rng = np.random.default_rng(0)
    for scale in (1e-300, 1e-150, 1e-8, 1.0, 1e8, 1e150):
        for n in (1, 7, 100, 1000):
            x = rng.standard_normal(n) * scale
            y = rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))
            xt, yt = torch.tensor(x), torch.tensor(y)
            approx = float(xt @ yt)
            bound = float(dot_error((xt.abs() @ yt.abs()).reshape(1), n)[0])
            exact = _exact_dot(x, y)
            assert abs(Fraction(approx) - exact) <= Fraction(bound), (scale, n)
            lo = float(safe_lower(torch.tensor([approx], dtype=torch.float64), bound)[0])
            hi = float(safe_upper(torch.tensor([approx], dtype=torch.float64), bound)[0])
            assert Fraction(lo) <= exact <= Fraction(hi)


def test_cancellation_is_covered():
    # 2^53 + 1 - 2^53: float64 loses the 1 entirely; the bound must still cover it.
    x = torch.tensor([2.0 ** 53, 1.0, -(2.0 ** 53)], dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    approx = x @ y
    err = dot_error((x.abs() @ y.abs()).reshape(1), 3)
    assert float(safe_lower(approx.reshape(1), err)[0]) <= 1.0 <= float(safe_upper(approx.reshape(1), err)[0])


def test_non_finite_values_never_become_proofs():
    v = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0], dtype=torch.float64)
    assert sanitize_lower(v).tolist()[:3] == [-float("inf"), -float("inf"), -float("inf")]
    assert sanitize_upper(v).tolist()[:3] == [float("inf"), float("inf"), float("inf")]
    assert float(safe_lower(torch.tensor([float("inf")], dtype=torch.float64), 0.0)[0]) == -float("inf")


def test_gamma_grows_with_length_and_rejects_absurd_lengths():
    assert 0 < gamma(1) < gamma(10) < gamma(10 ** 6)
    assert gamma(10, torch.float32) > gamma(10, torch.float64)
    try:
        gamma(2 ** 60)
    except ValueError:
        pass
    else:
        raise AssertionError("gamma accepted an inner length beyond the model's validity")
