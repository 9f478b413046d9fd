"""The rounding primitives bound real rounding errors (checked against exact rational sums)."""
import math
from fractions import Fraction

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from absint.domains.base import interval_affine
from absint.linear import ConvOperator, DenseOperator
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


# -- Box's affine image (domains.base.interval_affine) against exact rational interval arithmetic --


def _exact_image(M: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[Fraction, Fraction]]:
    out = []
    for i in range(M.shape[0]):
        a = c = Fraction(float(b[i]))
        for j in range(M.shape[1]):
            w = Fraction(float(M[i, j]))
            if w:
                x, y = Fraction(float(lo[j])), Fraction(float(hi[j]))
                a, c = (a + w * x, c + w * y) if w > 0 else (a + w * y, c + w * x)
        out.append((a, c))
    return out


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10 ** 6), wexp=st.integers(-320, 300), xexp=st.integers(-320, 300),
       width=st.sampled_from([0.0, 2.0 ** -40, 1e-3, 1.0]), conv=st.booleans())
@example(seed=1, wexp=-160, xexp=-160, width=0.0, conv=False)  # products in the subnormal range
@example(seed=2, wexp=-170, xexp=-150, width=1e-3, conv=True)
def test_interval_affine_contains_the_exact_image_at_every_magnitude(seed, wexp, xexp, width, conv):
    # weights and inputs from subnormal to near-overflow magnitudes, point and wide boxes: the
    # returned interval contains the exact real image of the box (or is non-finite: no proof); the
    # bias is of the products' size, so that underflow matters where they are subnormal
    g = torch.Generator().manual_seed(seed)
    if conv:
        op = ConvOperator(torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64) * 10.0 ** wexp, (1, 3, 3), (1, 1), (1, 1))
    else:
        op = DenseOperator(torch.randn(4, 6, generator=g, dtype=torch.float64) * 10.0 ** wexp)
    n_in = int(torch.tensor(op.in_shape).prod())
    M = op.dense()
    b = torch.randn(M.shape[0], generator=g, dtype=torch.float64) * 10.0 ** max(min(wexp + xexp, 300), -400)
    x = torch.randn(n_in, generator=g, dtype=torch.float64) * 10.0 ** xexp
    lo, hi = x - width * x.abs(), x + width * x.abs()
    bias = b.reshape(op.out_shape) if conv else b
    L, U = interval_affine(op, bias, lo.reshape(1, *op.in_shape), hi.reshape(1, *op.in_shape))
    for (a, c), l_, u_ in zip(_exact_image(M, b, lo, hi), L.reshape(-1).tolist(), U.reshape(-1).tolist()):
        assert l_ == -math.inf or (math.isfinite(l_) and Fraction(l_) <= a), (l_, float(a))
        assert u_ == math.inf or (math.isfinite(u_) and Fraction(u_) >= c), (u_, float(c))


def test_to_lower_and_to_upper_round_outward_into_a_narrower_dtype():
    """Bounds proved in float64 stay bounds in float32: every entry moves toward −∞ / +∞ (never to
    nearest), overflow goes to the infinity on the safe side, and a same-width conversion is exact."""
    from absint.rounding import to_lower, to_upper

    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.concatenate([rng.normal(size=2000) * 10.0 ** rng.integers(-30, 30, 2000),
                                        [0.1, -0.1, 1 / 3, 1e300, -1e300, 0.0, 1e-46]]))
    lo, hi = to_lower(x, torch.float32), to_upper(x, torch.float32)
    assert lo.dtype == hi.dtype == torch.float32
    assert bool((lo.double() <= x).all()) and bool((hi.double() >= x).all())
    assert bool((lo.double() < x).any()) and bool((hi.double() > x).any())  # some rounding happened
    # at most one float32 step away from round-to-nearest
    near = x.to(torch.float32)
    assert bool(((lo == near) | (lo == torch.nextafter(near, torch.tensor(-float("inf"))))).all())
    big, small = -4, -3  # ±1e300: beyond float32
    assert float(hi[big]) == float("inf") and float(lo[big]) == float(torch.finfo(torch.float32).max)
    assert float(lo[small]) == float("-inf") and float(hi[small]) == -float(torch.finfo(torch.float32).max)
    assert float(lo[-1]) == 0.0 and float(hi[-1]) > 0.0  # 1e-46: below the smallest float32 subnormal
    assert torch.equal(to_lower(x, torch.float64), x) and torch.equal(to_upper(x.float(), torch.float64), x.float().double())
    ints = torch.tensor([3, -(2 ** 40) - 1])  # integer bounds: exact in float64, rounded outward in float32
    assert to_lower(ints, torch.float64).tolist() == [3.0, -(2.0 ** 40) - 1]
    assert to_lower(ints, torch.float32).double()[1] <= -(2 ** 40) - 1 <= to_upper(ints, torch.float32).double()[1]
