"""Specifications: L-inf balls, robustness properties, and VNN-LIB parsing with clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from absint.errors import SpecError, VnnlibParseError
from absint.specs import Clause, InputBox, OutputProperty, linf_ball, robustness_property
from absint.vnnlib import parse_vnnlib

HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def test_linf_ball_is_clipped_and_validated():
    box = linf_ball(np.array([0.0, 0.5, 1.0]), 0.1)
    assert np.allclose(box.lower, [0.0, 0.4, 0.9]) and np.allclose(box.upper, [0.1, 0.6, 1.0])
    with pytest.raises(SpecError):
        linf_ball(np.zeros(3), -1.0)
    with pytest.raises(SpecError):
        linf_ball(np.zeros(3), float("nan"))
    with pytest.raises(SpecError, match="infeasible"):
        InputBox(np.ones(2), np.zeros(2))


def test_robustness_property_semantics():
    prop = robustness_property(2, 4)
    assert len(prop.clauses) == 3 and prop.is_pairwise_comparison()
    assert not prop.violated_by(np.array([0.0, 1.0, 3.0, 2.0]))
    assert prop.violated_by(np.array([0.0, 3.0, 3.0, 2.0]))  # a tie violates strict argmax
    assert prop.margins(np.array([0.0, 1.0, 3.0, 2.0])).min() == pytest.approx(1.0)
    with pytest.raises(SpecError):
        robustness_property(5, 4)


def test_vnnlib_dnf_and_instances():
    text = HEADER + """
    (assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))
                (and (<= X_0 3) (>= X_0 2) (<= X_1 1) (>= X_1 0))))
    (assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 (- 0.5)) (>= (+ Y_1 (* 2 Y_0)) 1))))
    """
    spec = parse_vnnlib("t.vnnlib", text=text)
    assert len(spec.instances) == 2
    inst = spec.instances[1]
    assert np.allclose(inst.region.lower, [2, 0]) and np.allclose(inst.region.upper, [3, 1])
    clauses = inst.prop.clauses
    assert len(clauses) == 2 and clauses[1].A.shape == (2, 2)
    assert inst.prop.violated_by(np.array([1.0, 0.0]))  # Y_0 >= Y_1
    assert inst.prop.violated_by(np.array([-1.0, 4.0]))  # Y_0 <= -0.5 and Y_1 + 2 Y_0 >= 1
    assert not inst.prop.violated_by(np.array([-1.0, 2.0]))


@pytest.mark.parametrize("body, message", [
    ("(assert (<= X_0 1))\n(assert (>= X_0 0)\n", "never closed"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (foo Y_0 0))",
     "unsupported formula operator 'foo'"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (>= (* Y_0 Y_1) 0))",
     "non-linear"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (>= Z_0 0))",
     "expected a number or a variable"),
])
def test_vnnlib_errors_name_file_and_line(body, message):
    with pytest.raises(VnnlibParseError, match=message) as exc:
        parse_vnnlib("bad.vnnlib", text=HEADER + body)
    assert str(exc.value).startswith("bad.vnnlib:")
    assert exc.value.line >= 5


def test_vnnlib_semantic_errors():
    with pytest.raises(SpecError, match="infeasible"):
        parse_vnnlib("t", text=HEADER + "(assert (<= X_0 0))(assert (>= X_0 1))(assert (<= X_1 1))(assert (>= X_1 0))"
                                        "(assert (>= Y_0 0))")
    with pytest.raises(SpecError, match="lack a lower or upper bound"):
        parse_vnnlib("t", text=HEADER + "(assert (<= X_0 1))(assert (>= Y_0 0))")
    with pytest.raises(VnnlibParseError, match="mix inputs"):
        parse_vnnlib("t", text=HEADER + "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))"
                                        "(assert (>= Y_0 X_0))")


def test_all_benchmark_vnnlib_files_parse(bench):
    files = sorted(bench.glob("mnistfc/vnnlib/2021/*.vnnlib")) + sorted(bench.glob("acasxu/vnnlib/*.vnnlib"))
    assert len(files) == 30 + 10
    for f in files:
        spec = parse_vnnlib(f)
        for inst in spec.instances:
            assert np.all(inst.region.lower <= inst.region.upper)
    mnist = parse_vnnlib(bench / "mnistfc/vnnlib/2021/prop_0_0.03.vnnlib")
    (inst,) = mnist.instances
    assert inst.region.shape == (784,) and len(inst.prop.clauses) == 9 and inst.prop.is_pairwise_comparison()
    assert inst.region.upper.max() - inst.region.lower.min() <= 1.0
    p6 = parse_vnnlib(bench / "acasxu/vnnlib/prop_6.vnnlib")
    assert len(p6.instances) == 2  # a disjunction over two input boxes
    p7 = parse_vnnlib(bench / "acasxu/vnnlib/prop_7.vnnlib")
    assert [c.A.shape for c in p7.instances[0].prop.clauses] == [(3, 5), (3, 5)]
    p1 = parse_vnnlib(bench / "acasxu/vnnlib/prop_1.vnnlib")
    (c,) = p1.instances[0].prop.clauses
    assert np.allclose(c.A, [[1, 0, 0, 0, 0]]) and np.isclose(c.b[0], -3.991125645861615)


def test_clause_validation():
    with pytest.raises(SpecError):
        Clause(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(SpecError):
        OutputProperty((Clause(np.zeros((1, 3)), np.zeros(1)),), 4)


def test_an_empty_clause_is_true_so_every_input_violates_the_property():
    """A clause of no rows (the empty conjunction) once crashed the attack with an IndexError."""
    import absint
    from absint.ir import Affine, Graph, Input
    from absint.linear import DenseOperator
    import torch

    (c,) = OutputProperty((Clause(np.zeros((0, 2)), np.zeros(0)),), 2).clauses
    assert c.satisfied_by(np.array([-5.0, 7.0]))
    g = Graph((Input("x", (), (3,)), Affine("y", ("x",), (2,), DenseOperator(torch.ones(2, 3, dtype=torch.float64)),
                                            torch.zeros(2, dtype=torch.float64))), "y", "lin")
    prop = OutputProperty((Clause(np.zeros((0, 2)), np.zeros(0)),), 2)
    for attack in (True, False):
        r = absint.verify(g, (InputBox(np.zeros(3), np.ones(3)), prop), analysis="deeppoly", attack=attack)
        assert r.verdict == "falsified"
