"""Float32 optimisation steps in the α/β sub-problem bounder (``BetaOptions.opt_dtype``, ``bab``'s
``beta_dtype``): the Adam steps run on a float32 copy of each batch's relaxation, and the bounds
reported come from one float64 pass with the values the steps chose. Checked: sampled soundness on
split sub-problems, that the reported rows are exactly a float64 pass's, that float32 steps find
bounds about as good as float64 steps, decisions end to end, overflow falls back to float64 steps,
and option validation."""
from __future__ import annotations

import pytest
import torch

import absint  # noqa: F401  (import order: absint before domains)
from absint.bab import BabOptions
from absint.bab.beta import BetaBounder, BetaOptions
from absint.errors import OptionError
from bab_cases import decide_both_ways, random_splits, root_unstable, samples, setup

F64 = torch.float64
OPTS = dict(iters=15, root_iters=30, layer_iters=10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_float32_steps_give_sound_bounds_on_split_subproblems(seed):
    g, lo, hi, C, d = setup(seed)
    bb = BetaBounder(g, lo, hi, C, d, BetaOptions(**OPTS, opt_dtype="float32"))
    assert bb.odtype == torch.float32
    x, y, pre = samples(g, lo, hi, seed=seed)
    vals = y @ C.T + d
    assert root_unstable(bb).numel() >= 4
    splits = random_splits(bb, 24, torch.Generator().manual_seed(100 + seed), most=5)
    out = bb.bound(splits, from_layer=torch.zeros(splits.shape[0], dtype=torch.int32))
    assert out.rows.dtype == F64
    checked = 0
    for i in range(splits.shape[0]):
        s = splits[i].to(F64)
        ok = ~(((s > 0)[None] & (pre < 0)) | ((s < 0)[None] & (pre > 0))).any(1)
        if not bool(ok.any()):
            continue
        assert not bool(out.infeasible[i])
        checked += 1
        assert bool((out.rows[i] <= vals[ok].min(0).values + 1e-9).all()), i
    assert checked >= 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reported_rows_are_exactly_one_float64_pass_with_the_chosen_values(seed):
    """The rows returned after float32 steps equal a float64 pass (no steps) started from the α and β
    the bounder returned: nothing computed in float32 reaches a reported bound."""
    g, lo, hi, C, d = setup(seed)
    bb = BetaBounder(g, lo, hi, C, d, BetaOptions(**OPTS, opt_dtype="float32"))
    assert root_unstable(bb).numel() >= 4
    splits = random_splits(bb, 16, torch.Generator().manual_seed(100 + seed), most=5)
    first = torch.zeros(splits.shape[0], dtype=torch.int32)
    out = bb.bound(splits, from_layer=first)
    again = bb.bound(splits, iters=0, from_layer=first, init_alpha=out.alpha, init_beta=out.beta)
    live = ~out.infeasible
    assert bool(live.sum() >= 8)
    assert torch.equal(out.rows[live], again.rows[live])
    assert torch.equal(out.A[live], again.A[live])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_float32_steps_bound_about_as_well_as_float64_steps(seed):
    """Same problem, same steps: the float32 run's (float64-certified) bounds are within a small
    fraction of the float64 run's on the root and on split sub-problems (they differ only by the
    steps' rounding)."""
    g, lo, hi, C, d = setup(seed)
    b64 = BetaBounder(g, lo, hi, C, d, BetaOptions(**OPTS))
    b32 = BetaBounder(g, lo, hi, C, d, BetaOptions(**OPTS, opt_dtype="float32"))
    scale = 1.0 + b64.root_rows.abs()
    assert bool((b32.root_rows >= b64.root_rows - 0.02 * scale).all()), (b32.root_rows, b64.root_rows)
    assert root_unstable(b64).numel() >= 4
    splits = random_splits(b64, 16, torch.Generator().manual_seed(100 + seed), most=5)
    o64, o32 = b64.bound(splits), b32.bound(splits)
    live = ~o64.infeasible
    assert torch.equal(o64.infeasible, o32.infeasible)
    gap = (o64.rows[live] - o32.rows[live]) / (1.0 + o64.rows[live].abs())
    assert float(gap.max()) < 0.05 and float(gap.mean()) < 0.01, gap


def test_float32_falls_back_to_float64_steps_beyond_its_range():
    """Weights beyond float32's safe range: the steps run in float64 (a float32 copy would overflow)."""
    g, lo, hi, C, d = setup(0)
    big = g.to("cpu", F64)
    first = next(n for n in big.nodes if hasattr(n, "operator"))
    first.operator.weight.mul_(1e20)
    bb = BetaBounder(big, lo, hi, C, d, BetaOptions(**OPTS, opt_dtype="float32"))
    assert bb.odtype == F64
    assert torch.isfinite(bb.root_rows).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_bab_with_float32_steps_decides_correctly(seed):
    # a node budget, no wall clock: the same answer on a busy machine
    decide_both_ways(seed, BabOptions(split="relu", batch_size=16, max_nodes=20_000, attack_every=0,
                                      beta_dtype="float32"))


def test_dtype_options_validated():
    with pytest.raises(OptionError, match="beta_dtype"):
        BabOptions(beta_dtype="float16")
    with pytest.raises(ValueError, match="opt_dtype"):
        BetaOptions(opt_dtype="half")


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_estimate_engine_drops_only_the_rounding_term(dtype):
    """``EngineOptions(account_rounding=False)`` (what the float32 steps use) returns the pass's value
    without its rounding-error term: never below the proved bound, and above it by that term only."""
    from absint.domains.linear_bounds import Engine, EngineOptions, GraphView

    g, lo, hi, C, d = setup(1)
    g = g.to("cpu", dtype)
    out = {}
    for account in (True, False):
        eng = Engine(EngineOptions(account_rounding=account), dtype=dtype)
        view = GraphView.of(g, 1)
        eng.store(view.input, 2, lo.to(dtype)[None], hi.to(dtype)[None])
        with torch.no_grad():
            out[account] = eng.run_rows(view.output, C.to(dtype), d.to(dtype), None)
    gap = out[False] - out[True]
    assert bool((gap > 0).all())  # the proved bound pays a positive rounding term
    assert float(gap.max()) < 1e4 * torch.finfo(dtype).eps * (1 + float(out[True].abs().max()))
