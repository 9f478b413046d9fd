"""One decision path: verify, verify_instance and verify_robustness decide through verify_instances,
so an analysis's counterexample, clause-aware margins, out-of-memory and the sampling attack are
handled the same way for a VNN-LIB instance and for a batch of images."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

import absint
from absint.analyses import Analysis, BoundResult
from absint.errors import InvariantError
from absint.ir import Affine, Graph, Input, Relu
from absint.linear import DenseOperator
from absint.options import Options
from absint.specs import Clause, InputBox, Instance, OutputProperty, linf_ball, robustness_property

torch.set_num_threads(1)
verify_module = importlib.import_module("absint.verify")  # the module (absint.verify is the function)


def _net() -> Graph:
    """y0 = x0 + x1, y1 = 1 (a constant): class 0 wins where x0 + x1 > 1."""
    w1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    return Graph((Input("x", (), (2,)), Affine("a", ("x",), (2,), operator=DenseOperator(w1)), Relu("r", ("a",), (2,)),
                  Affine("y", ("r",), (2,), operator=DenseOperator(w2), bias=torch.tensor([0.0, 1.0]))), "y")


@dataclass(frozen=True)
class _ScriptOptions(Options):
    pass


class _Scripted(Analysis):
    """An analysis that answers what the test tells it (``script`` set per test)."""

    name = "t_scripted"
    options_class = _ScriptOptions
    batchable = True
    script: ClassVar[dict] = {}
    calls: ClassVar[list[int]] = []

    def bound(self, graph, lower, upper, C, d, *, deadline=None, **kw):
        type(self).calls.append(int(lower.shape[0]))
        if "raise" in self.script:
            raise self.script["raise"]
        B, m = C.shape[:2]
        lower_rows = np.full((B, m), self.script.get("lower", -1.0))
        cands = self.script.get("candidates")
        return BoundResult(lower_rows, candidates=None if cands is None else [cands(b, lower[b]) for b in range(B)],
                           notes=["scripted"] * B, stats=dict(self.script.get("stats", {})))


@pytest.fixture
def scripted():
    _Scripted.calls = []
    _Scripted.script = {}
    yield _Scripted
    _Scripted.script = {}


@pytest.fixture
def no_sampling(monkeypatch):
    """Switch the sampling attack off, so the analysis's own answer is what decides."""
    monkeypatch.setattr(verify_module, "sample_attack_many", lambda graph, problems, *a, **k: [None] * len(problems))


def _images():
    # points near the decision line x0 + x1 = 1, all of class 0 at the centre
    return np.array([[0.6, 0.6], [0.7, 0.5], [0.55, 0.65], [0.9, 0.3]]), [0, 0, 0, 0]


def test_analysis_counterexample_is_kept_in_verify_robustness(scripted, no_sampling) -> None:
    """A MILP-style candidate from the analysis falsifies after a re-check, in batches too."""
    scripted.script = {"candidates": lambda b, lo: lo.numpy().copy()}  # the box's lower corner
    images, labels = _images()
    res = absint.verify_robustness(_net(), images, labels, 0.15, analysis=scripted(), attack=False, batch_size=4)
    assert scripted.calls == [4]  # one batched call
    assert [str(r.verdict) for r in res] == ["falsified"] * 4
    assert all(r.reason == "counterexample (t_scripted)" for r in res)
    for r, img in zip(res, images):
        assert r.counterexample is not None and r.counterexample_output[0] < r.counterexample_output[1]
        assert np.all(np.abs(r.counterexample - img) <= 0.15 + 1e-12)


def test_a_wrong_candidate_is_not_trusted(scripted, no_sampling) -> None:
    scripted.script = {"candidates": lambda b, lo: np.array([5.0, 5.0])}  # outside the region
    images, labels = _images()
    res = absint.verify_robustness(_net(), images, labels, 0.01, analysis=scripted(), attack=False)
    assert [str(r.verdict) for r in res] == ["unknown"] * 4


def test_clause_aware_margins_decide_in_verify_robustness(scripted, no_sampling) -> None:
    class ClauseAware(_Scripted):
        clause_aware = True

    ClauseAware.script = {"lower": -1.0, "stats": {"clause_lower": [0.5]}}
    images, labels = _images()
    res = absint.verify_robustness(_net(), images, labels, 0.01, analysis=ClauseAware(), attack=False, batch_size=4)
    assert ClauseAware.calls == [1, 1, 1, 1]  # a clause-aware analysis sees one region at a time
    assert all(r.verified and r.margin == 0.5 for r in res)


@pytest.mark.parametrize("exc,reason", [(MemoryError("big"), "out of memory: big"), (TimeoutError(), "time-out")])
def test_memory_error_and_timeout_give_unknown(scripted, exc, reason) -> None:
    scripted.script = {"raise": exc}
    images, labels = _images()
    res = absint.verify_robustness(_net(), images, labels, 0.01, analysis=scripted(), attack=False, batch_size=2)
    # a time-out's reason goes on to say what was done ("time-out after 0.01 s: ... stopped before ...")
    assert [(str(r.verdict), r.reason[:len(reason)]) for r in res] == [("unknown", reason)] * 4
    single = absint.verify(_net(), Instance(linf_ball(images[0], 0.01), robustness_property(0, 2)),
                           analysis=scripted(), attack=False)
    assert (str(single.verdict), single.reason[:len(reason)]) == ("unknown", reason)


def test_sampling_attack_runs_in_verify_robustness(scripted, monkeypatch) -> None:
    """Without PGD and with an analysis that proves nothing, sampling still finds the counterexample."""
    monkeypatch.setattr(verify_module, "pgd_attack", lambda *a, **k: None)
    images, labels = np.array([[0.55, 0.55]]), [0]
    res = absint.verify_robustness(_net(), images, labels, 0.2, analysis=scripted(), attack=False)
    assert str(res[0].verdict) == "falsified" and res[0].reason == "counterexample (sampling)"
    assert scripted.calls == []  # decided before the analysis ran


def test_verify_and_verify_robustness_agree(networks_dir) -> None:
    net = absint.load_network(networks_dir / "digits_mlp_2x64.onnx")
    images, labels = absint.load_images(networks_dir / "digits_test.npz", net.input_shape)
    batch = absint.verify_robustness(net, images[:12], labels[:12], 0.02, analysis="deeppoly", batch_size=5)
    for img, lab, r in zip(images[:12], labels[:12], batch):
        one = absint.verify(net, Instance(linf_ball(img, 0.02), robustness_property(int(lab), 10)),
                            analysis="deeppoly")
        assert one.verdict == r.verdict
        if r.margin is not None:
            assert one.margin == pytest.approx(r.margin, abs=1e-9)


def test_a_counterexample_that_does_not_hold_is_an_invariant_error() -> None:
    region = InputBox(np.zeros(2), np.ones(2))
    prop = OutputProperty((Clause(np.array([[-1.0, 1.0]]), np.array([-100.0])),), 2)  # never violated here
    with pytest.raises(InvariantError, match="did not violate"):
        verify_module._falsified("x", "box", 0.0, np.array([0.5, 0.5]), _net(), region, prop, "test")


def test_unsupported_ops_are_named_before_any_work(scripted) -> None:
    class OnlyAffine(_Scripted):
        required_ops = frozenset({Affine})

    images, labels = _images()
    with pytest.raises(absint.UnsupportedOpError, match="'r'.*Relu"):
        absint.verify_robustness(_net(), images, labels, 0.01, analysis=OnlyAffine())
    assert OnlyAffine.calls == []


def test_verify_instance_takes_a_name_or_source_and_refuses_bad_arguments_clearly() -> None:
    """verify_instance/verify_instances take what verify takes (analysis names, loadable networks), and a
    wrong argument is an absint error naming the problem, never an AttributeError from deep inside."""
    g = _net()
    inst = Instance(InputBox(np.array([0.8, 0.8]), np.array([0.9, 0.9])), robustness_property(0, 2))
    by_name = absint.verify_instance(g, inst, "deeppoly", attack=False)
    assert by_name.verdict == absint.Verdict.VERIFIED and by_name.analysis == "deeppoly"
    with pytest.raises(absint.AbsintError, match="name or an Analysis"):
        absint.verify_instance(g, inst, 42)  # type: ignore[arg-type]
    with pytest.raises(absint.AbsintError, match="unknown analysis"):
        absint.verify_instance(g, inst, "no-such-analysis")
    with pytest.raises(absint.SpecError, match="3 input variables but the network expects 2"):
        absint.verify_instance(g, Instance(InputBox(np.zeros(3), np.ones(3)), robustness_property(0, 2)), "box")
    with pytest.raises(absint.SpecError, match="not str"):
        absint.verify_instance(g, "x0 > 1", "box")  # type: ignore[arg-type]
    with pytest.raises(absint.SpecError, match="not int"):
        verify_module.verify_instances(g, [inst, 3], "box")  # type: ignore[list-item]
    with pytest.raises(absint.SpecError, match="a sequence of absint.specs.Instance"):
        verify_module.verify_instances(g, 3, "box")  # type: ignore[arg-type]


@pytest.mark.parametrize("label", [0.5, "a", float("nan"), True])
def test_verify_robustness_refuses_labels_that_are_not_class_indices(label) -> None:
    """7.5 was silently truncated to 7 and "a" crashed with ValueError; whole floats (from data files) are fine."""
    with pytest.raises(absint.SpecError, match="whole number"):
        absint.verify_robustness(_net(), np.array([[0.8, 0.8]]), [label], 0.05, analysis="box")
    ok = absint.verify_robustness(_net(), np.array([[0.8, 0.8]]), [np.float32(0.0)], 0.05, analysis="box", attack=False)
    assert ok[0].verdict == absint.Verdict.VERIFIED
