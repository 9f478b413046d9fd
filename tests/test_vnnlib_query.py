"""Reading VNN-LIB 1.0 and 2.0 into one internal form and lowering it: the 1.0 benchmark files give
the same specs through the 2.0 path (official parser), bad input is one clear error, big and deep
files read without recursion."""
from __future__ import annotations

import time

import numpy as np
import pytest

from absint.errors import SpecError, VnnlibParseError
from absint.vnnlib import parse_vnnlib, query_version, read_query
from absint.vnnlib.lowering import lower_query
from absint.vnnlib.query import EQ, GE, GT, NE
from onnx_builders import v1_to_v2

V2 = "(vnnlib-version <2.0>)\n"
SHAPES = {"acasxu": ((1, 5), (1, 5)), "mnistfc": ((1, 784, 1), (1, 10))}


def _bench_files(bench):
    files = sorted(bench.glob("mnistfc/vnnlib/2021/*.vnnlib")) + sorted(bench.glob("acasxu/vnnlib/*.vnnlib"))
    assert len(files) == 40
    return files


def _same_spec(a, b) -> None:
    assert len(a.instances) == len(b.instances)
    for i, j in zip(a.instances, b.instances):
        assert np.array_equal(i.region.lower, j.region.lower) and np.array_equal(i.region.upper, j.region.upper)
        assert len(i.prop.clauses) == len(j.prop.clauses) and i.prop.n_outputs == j.prop.n_outputs
        for c, d in zip(i.prop.clauses, j.prop.clauses):
            assert np.array_equal(c.A, d.A) and np.array_equal(c.b, d.b)


def test_every_benchmark_file_lowers_the_same_through_the_2_0_path(bench, tmp_path):
    """Each 1.0 file, rewritten as 2.0 with the model's shapes (X[0,i], Y[0,j]) and read by the
    official parser, gives the same boxes and constraint matrices."""
    for f in _bench_files(bench):
        in_shape, out_shape = SHAPES["mnistfc" if "mnistfc" in f.parts else "acasxu"]
        v2 = tmp_path / f.name
        v2.write_text(v1_to_v2(f.read_text(), in_shape, out_shape))
        q1, q2 = read_query(f), read_query(v2)
        assert (q1.version, q2.version) == ("1.0", "2.0")
        l1, l2 = lower_query(q1), lower_query(q2)
        assert l1.layout.trivial and l2.layout.trivial
        _same_spec(l1.spec, l2.spec)


# Quick instances (truth.csv) answered through the 2.0 path with complete branch and bound.
VERDICTS = [("acasxu", "ACASXU_run2a_2_1_batch_2000.onnx", "prop_3.vnnlib", "unsat"),
            ("acasxu", "ACASXU_run2a_1_9_batch_2000.onnx", "prop_3.vnnlib", "sat"),
            ("acasxu", "ACASXU_run2a_2_1_batch_2000.onnx", "prop_2.vnnlib", "sat"),
            ("mnistfc", "mnist-net_256x2.onnx", "2021/prop_2_0.03.vnnlib", "unsat")]


@pytest.mark.parametrize("bench_name, onnx, prop, truth", VERDICTS)
def test_benchmark_verdicts_through_the_2_0_path(bench, tmp_path, bench_name, onnx, prop, truth):
    from absint.vnnlib.solver import solve

    root = bench / bench_name
    in_shape, out_shape = SHAPES[bench_name]
    q = tmp_path / "q.vnnlib"
    q.write_text(v1_to_v2((root / "vnnlib" / prop).read_text(), in_shape, out_shape))
    ans = solve(q, {"N": root / "onnx" / onnx}, analysis="bab" if bench_name == "acasxu" else "deeppoly")
    assert ans.status == truth, ans.reason
    if truth == "sat":
        assert set(ans.assignment) == {"X", "Y"} and ans.assignment["X"].shape == in_shape


def test_version_detection_and_the_internal_form(tmp_path):
    assert query_version("; c\n(declare-const X_0 Real)") == "1.0"
    assert query_version("  ; c\n (vnnlib-version <2.0>)") == "2.0"
    text = V2 + ("(declare-network f (declare-input X real [2]) (declare-hidden H real [3] \"h\")"
                 " (declare-output Y real [1,2]))\n"
                 "(declare-network g (equal-to f) (declare-input A real [2]) (declare-output B real [1,2]))\n"
                 "(assert (and (<= X[0] 1.0) (> Y[0,1] (* 2.0 H[2])) (== A[1] X[1]) (!= B[0,0] 0.5)))\n"
                 "(assert (or (or (< X[1] 0.0) (or (>= Y[0,0] -1.0))) (>= (- Y[0,1] Y[0,0] 0.5) 0.0)))\n")
    q = read_query("q.vnnlib", text=text)
    assert [v.name for v in q.variables] == ["X", "H", "Y", "A", "B"]
    assert [v.offset for v in q.variables] == [0, 2, 5, 7, 9] and q.n_elements == 11
    assert q.networks[1].equal_to == "f" and q.networks[0].hidden[0].onnx_name == "h"
    kinds = sorted((a.kind, a.index, a.coef, a.const) for a in q.atoms)
    assert (GE, (0,), (-1.0,), 1.0) in kinds  # X[0] <= 1  ->  -X[0] + 1 >= 0
    assert (GT, (6, 4), (1.0, -2.0), 0.0) in kinds or (GT, (4, 6), (-2.0, 1.0), 0.0) in kinds
    assert any(k == EQ for k, *_ in kinds) and any(k == NE for k, *_ in kinds)
    (_, ors) = q.formula.children[0], q.formula.children[-1]
    assert ors.op == "or" and len(ors.children) == 3  # nested or merged into one


def test_a_query_needing_the_network_is_refused_by_parse_vnnlib(tmp_path):
    two = V2 + ("(declare-network f (declare-input X real [1]) (declare-output Y real [1]))\n"
                "(declare-network g (declare-input A real [1]) (declare-output B real [1]))\n"
                "(assert (and (<= X[0] 1.0) (>= X[0] 0.0) (== A[0] X[0]) (>= Y[0] B[0])))\n")
    with pytest.raises(SpecError, match="2 networks.*absint-vnnlib"):
        parse_vnnlib("q.vnnlib", text=two)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file"),
    (b"(declare-const X_0 Real)\x00(declare-const Y_0 Real)", "NUL"),
    (b"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 nan))\n(assert (>= X_0 0))\n"
     b"(assert (>= Y_0 0))", "'nan' is not finite"),
    (b"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1e400))\n(assert (>= X_0 0))\n"
     b"(assert (>= Y_0 0))", "'1e400' is not finite"),
    (b"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 -inf))\n(assert (>= X_0 0))\n"
     b"(assert (>= Y_0 0))", "'-inf' is not finite"),
    (V2.encode() + b"(declare-network f (declare-input X real [1]) (declare-output Y real [1]))\n(assert (<= X[0] "
     + b"1" * 400 + b".0))", "out of range"),
    (V2.encode() + b"(declare-network f (declare-input X real [1]) (declare-output Y real [1]))\n(assert (<= X[0] 1))",
     "Type mismatch"),
])
def test_bad_input_is_one_typed_error_naming_the_file(tmp_path, content, message):
    p = tmp_path / "bad.vnnlib"
    p.write_bytes(content)
    with pytest.raises(VnnlibParseError, match=message) as exc:
        read_query(p)
    assert str(exc.value).startswith(str(p))


def _deep(depth: int, v2: bool) -> str:
    if v2:
        head = V2 + "(declare-network f (declare-input X real [2]) (declare-output Y real [2]))\n"
        head += "(assert (and (<= X[0] 1.0) (>= X[0] 0.0) (<= X[1] 1.0) (>= X[1] 0.0)))\n"
        f = "(>= Y[0] 0.0)"
        for i in range(depth):
            f = f"(or (<= Y[1] {i}.0) {f})"
    else:
        head = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        head += "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))\n"
        f = "(>= Y_0 0)"
        for i in range(depth):
            f = f"(or (<= Y_1 {i}) {f})"
    return head + f"(assert {f})\n"


@pytest.mark.parametrize("v2", [False, True])
def test_5000_deep_nesting_reads_without_recursion(v2):
    spec = parse_vnnlib("deep.vnnlib", text=_deep(5000, v2))
    (inst,) = spec.instances
    assert len(inst.prop.clauses) == 5001


def test_nesting_beyond_what_the_reference_parser_survives_is_refused():
    from absint.vnnlib.v2 import MAX_NESTING

    with pytest.raises(VnnlibParseError, match="nest .* levels deep"):
        read_query("deep.vnnlib", text=_deep(MAX_NESTING + 10, True))
    assert len(read_query("deep.vnnlib", text=_deep(MAX_NESTING + 10, False)).atoms) > MAX_NESTING  # 1.0: fine


def _wide(n: int) -> str:
    head = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -0.1))\n(assert (<= X_{i} 0.1))\n" for i in range(3))
    head = "".join(f"(declare-const Y_{i} Real)\n" for i in range(3)) + head
    clauses = " ".join(f"(and (>= Y_0 Y_{1 + i % 2}) (<= Y_{1 + i % 2} {i * 1e-3:.6f}))" for i in range(n))
    return head + f"(assert (or {clauses}))\n"


def test_many_clauses_read_and_the_reader_obeys_its_deadline():
    spec = parse_vnnlib("wide.vnnlib", text=_wide(20_000))
    (inst,) = spec.instances
    assert len(inst.prop.clauses) == 20_000 and inst.prop.clauses[7].A.shape == (2, 3)
    assert inst.prop.violated_by(np.array([1.0, 0.5, -1.0]))  # clause 1: Y_0 >= Y_2, Y_2 <= 0.001
    assert not inst.prop.violated_by(np.array([0.0, 50.0, 50.0]))
    with pytest.raises(TimeoutError):
        parse_vnnlib("wide.vnnlib", text=_wide(20_000), deadline=time.perf_counter() - 1.0)


def test_margins_are_vectorised_and_agree_with_the_clauses():
    spec = parse_vnnlib("wide.vnnlib", text=_wide(500))
    prop = spec.instances[0].prop
    rng = np.random.default_rng(0)
    for y in rng.normal(size=(20, 3)):
        slow = np.array([np.max(-(c.A @ y + c.b)) for c in prop.clauses])
        assert np.array_equal(prop.margins(y), slow)
        assert prop.violated_by(y) == any(c.satisfied_by(y) for c in prop.clauses)


def test_lowering_obeys_the_deadline_and_vnncomp_answers_timeout_not_error(bench, tmp_path):
    q = read_query("wide.vnnlib", text=_wide(20_000))
    with pytest.raises(TimeoutError):
        lower_query(q, deadline=time.perf_counter() - 1.0)
    from absint.bench.vnncomp import run_instance

    acas = bench / "acasxu"
    out = tmp_path / "r.txt"
    word, result, _ = run_instance(acas / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", acas / "vnnlib/prop_1.vnnlib",
                                   out, timeout=1e-6)  # loading alone takes longer than that
    assert word == "timeout" and out.read_text() == "timeout\n" and "time-out" in result.reason
