"""Time limits hold for every phase of an instance, and a time-out says what was done.

No assertion here reads a clock: an analysis that never checks its deadline (it loops forever)
must still come back, as ``unknown`` with a "time-out" reason, which only the limit can cause.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import absint
from absint.analyses import Analysis, BoundResult
from absint.attack import AttackOptions, budgeted_attack, pgd_attack
from absint.specs import Instance, linf_ball, robustness_property
from absint.timelimit import InvalidTimeLimit, Progress, allowed_overshoot, hard_limit
from absint.verify import verify_instance

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "networks/digits_mlp_2x64.onnx"
DATA = ROOT / "networks/digits_test.npz"


class Stubborn(Analysis):
    """Never looks at its deadline (a stand-in for any phase that forgets to)."""

    name = "stubborn"

    def bound(self, graph, lower, upper, C, d, *, deadline=None) -> BoundResult:
        while True:
            sum(range(1000))


class Cooperative(Analysis):
    """Stops at its deadline without a bound, as analyses do."""

    name = "cooperative"

    def bound(self, graph, lower, upper, C, d, *, deadline=None) -> BoundResult:
        import time

        while deadline is None or time.perf_counter() < deadline:
            sum(range(1000))
        raise TimeoutError("time limit reached")


@pytest.fixture(scope="module")
def digits():
    net = absint.load_network(NET)
    images, labels = absint.load_images(DATA, tuple(net.input_shape))
    return net, images, labels


def _instance(images, labels, i: int = 3, eps: float = 0.08) -> Instance:
    return Instance(linf_ball(images[i], eps), robustness_property(int(labels[i]), 10))


def test_hard_limit_stops_code_that_never_checks():
    import time

    with hard_limit(time.perf_counter() + 0.05) as stop:
        while True:
            sum(range(100))
    assert stop.fired and stop.armed
    with hard_limit(None) as none:  # no limit: nothing armed, nothing fired
        pass
    assert not none.armed and not none.fired


def test_hard_limit_swallowed_once_fires_again():
    import time

    from absint.timelimit import HardTimeLimit

    # The busy loop sits wholly inside the ``try`` so each firing is caught there: a loop whose
    # backward jump lies outside the ``try`` lets a firing land between iterations (a race CI hit).
    caught = 0
    with hard_limit(time.perf_counter() + 0.05) as stop:
        while True:
            try:
                while True:
                    sum(range(100))
            except HardTimeLimit:  # code that swallows the stop (it should not)
                caught += 1
                if caught == 2:
                    raise
    assert stop.fired and caught == 2


def test_hard_limit_nests_and_stays_out_of_threads():
    import time

    with hard_limit(time.perf_counter() + 0.05) as outer:
        with hard_limit(time.perf_counter() + 100) as inner:
            assert not inner.armed  # the outer block covers it
            while True:
                sum(range(100))
    assert outer.fired and not inner.fired
    seen = {}

    def worker():
        with hard_limit(time.perf_counter() + 100) as st:
            seen["armed"] = st.armed

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["armed"] is False  # SIGALRM belongs to the main thread


def test_stubborn_analysis_is_stopped_by_the_limit(digits):
    net, images, labels = digits
    r = absint.verify(NET, _instance(images, labels), analysis=Stubborn(), timeout=0.3)
    assert r.verdict is absint.Verdict.UNKNOWN
    assert r.reason.startswith("time-out after") and "(limit 0.3 s)" in r.reason
    assert "network loaded" in r.reason and "PGD" in r.reason and "stopped during stubborn bounding" in r.reason
    # the same through verify_instance and verify_robustness
    r = verify_instance(net, _instance(images, labels), Stubborn(), timeout=0.3)
    assert r.verdict is absint.Verdict.UNKNOWN and "stopped during stubborn bounding" in r.reason
    rs = absint.verify_robustness(net, images[3:5], labels[3:5], 0.08, analysis=Stubborn(), timeout=0.3,
                                  batch_size=1)
    assert all(r.verdict is not absint.Verdict.VERIFIED for r in rs)
    assert any(r.reason.startswith("time-out after") and "stopped during stubborn bounding" in r.reason for r in rs)


def test_cooperative_time_out_says_what_was_done(digits):
    net, images, labels = digits
    r = absint.verify(net, _instance(images, labels), analysis=Cooperative(), timeout=0.3)
    assert r.verdict is absint.Verdict.UNKNOWN
    assert r.reason.startswith("time-out after") and "cooperative stopped before it had a bound" in r.reason
    assert "network loaded" not in r.reason  # a loaded Graph was given


def test_limit_covers_parsing_the_specification(digits, tmp_path):
    """A VNN-LIB file that takes long to read counts against the limit, like everything else."""
    net, images, labels = digits
    spec = tmp_path / "many.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(64)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.01))" for i in range(64)]
    clauses = " ".join(f"(and (>= Y_{k % 9 + 1} Y_0) (<= Y_0 {k}.5))" for k in range(20000))
    lines.append(f"(assert (or {clauses}))")
    spec.write_text("\n".join(lines) + "\n")
    r = absint.verify(net, spec, analysis="box", timeout=0.2)
    assert r.verdict is absint.Verdict.UNKNOWN and r.reason.startswith("time-out"), r.reason


def test_time_limits_are_validated(digits):
    net, images, labels = digits
    inst = _instance(images, labels)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(InvalidTimeLimit):
            absint.verify(net, inst, analysis="box", timeout=bad)
        with pytest.raises(InvalidTimeLimit):
            verify_instance(net, inst, absint.get_analysis("box"), timeout=bad)
        with pytest.raises(InvalidTimeLimit):
            absint.verify_robustness(net, images[:2], labels[:2], 0.01, analysis="box", timeout=bad)
    with pytest.raises(absint.AbsintError, match="attack_budget"):
        absint.verify(net, inst, analysis="box", attack_budget=-1)
    with pytest.raises(absint.AbsintError, match="batch_size"):
        absint.verify_robustness(net, images[:2], labels[:2], 0.01, analysis="box", batch_size=0)
    assert absint.verify_robustness(net, images[:0], labels[:0], 0.01, analysis="box") == []
    assert allowed_overshoot(10) == 1.0 and allowed_overshoot(100) == 5.0


def test_attacks_count_steps_and_stop_at_their_deadline(digits):
    import time

    net, images, labels = digits
    inst = _instance(images, labels, i=0, eps=0.01)  # robust: no counterexample ends the attack early
    stats: dict = {}
    assert pgd_attack(net, inst.region, inst.prop, AttackOptions(restarts=2, steps=7), stats=stats) is None
    assert stats == {"pgd_runs": 1, "pgd_steps": 7}
    stats = {}
    assert pgd_attack(net, inst.region, inst.prop, AttackOptions(), deadline=time.perf_counter() - 1,
                      stats=stats) is None
    assert stats == {}  # a passed deadline: not even the start pool
    assert budgeted_attack(net, inst.region, inst.prop, 1e3, deadline=time.perf_counter() - 1) is None


def test_progress_reason_lists_the_steps():
    p = Progress(20.0)
    p.done("network loaded in 0.5 s")
    p.done("PGD 200 steps")
    with pytest.raises(RuntimeError):
        with p.running("bab bounding"):
            raise RuntimeError
    assert p.phase == "bab bounding"  # kept after an exception: what a hard stop interrupted
    text = p.timeout_reason("bab timeout after 1532 sub-problems bounded", stopped=p.phase)
    assert text.startswith("time-out after") and "(limit 20 s): network loaded in 0.5 s, PGD 200 steps, " \
        "bab timeout after 1532 sub-problems bounded, stopped during bab bounding" in text



def test_vnncomp_watchdog_writes_timeout_when_native_code_hangs(tmp_path):
    """``absint vnncomp``'s last resort: a phase stuck in native code (here a sleep) past the limit
    and the allowed overshoot; the watchdog thread writes ``timeout`` and ends the process."""
    import subprocess
    import sys

    out = tmp_path / "result.txt"
    code = (
        "import threading, time\n"
        "from absint.bench.vnncomp import _watchdog\n"
        f"_watchdog({str(out)!r}, '2022', time.perf_counter() + 0.2, threading.Lock(), threading.Event())\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "timeout\n"


def test_vnncomp_limit_covers_loading_and_parsing(tmp_path):
    """run_instance hands the files to verify, so the clock starts before loading and parsing."""
    from absint.bench.vnncomp import run_instance

    spec = tmp_path / "p.vnnlib"
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(64)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(10))
    spec.write_text(decl + "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.01))\n" for i in range(64))
                    + "(assert (>= Y_1 Y_0))\n")
    word, result, _ = run_instance(NET, spec, tmp_path / "r.txt", timeout=1e-6, analysis="box")
    assert word == "timeout" and "time-out" in result.reason
    assert "network loaded" in result.reason or "loading the network" in result.reason


def test_huge_limits_mean_no_limit_instead_of_crashing_the_timers(digits):
    """``timeout=1e11`` once crashed verify with OverflowError (a threading wait past time_t)."""
    from absint.timelimit import NO_LIMIT_BEYOND, check_limit

    assert check_limit(1e11) is None and check_limit(np.float64(5.0)) == 5.0
    assert check_limit(NO_LIMIT_BEYOND) == NO_LIMIT_BEYOND
    with pytest.raises(InvalidTimeLimit):
        check_limit(float("inf"))
    net, images, labels = digits
    r = absint.verify(net, _instance(images, labels, eps=0.0), timeout=1e11)
    assert r.verdict in ("verified", "falsified")
