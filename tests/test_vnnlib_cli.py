"""The chapter-5 contract of ``absint-vnnlib`` (VNN-LIB 2.0): global options, every ``supports``
capability, ``verify``'s four answers, the assignment formats, the error conditions of section
5.3.2 and the exit codes. Output shapes are compared with ``vnnlib-test-solver``, the standard's
reference double of this interface."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from absint.vnnlib import cli
from onnx_builders import DOUBLE, mlp, save

ROOT = Path(__file__).resolve().parents[1]
V2 = "(vnnlib-version <2.0>)\n"
DECL = "(declare-network f (declare-input X real [1,2]) (declare-hidden H real [1,2] \"h\") (declare-output Y real [1,1]))\n"
BOX = "(assert (and (>= X[0,0] -1.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))\n"
W1, B1, W2, B2 = [[1.0, 1.0], [1.0, -1.0]], [0.0, 0.0], [[1.0, 1.0]], [0.0]  # y = relu(x0+x1) + relu(x0-x1)


def run(capsysbinary, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of ``absint-vnnlib ARGV`` (argparse's own errors exit too)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsysbinary.readouterr()
    return code, out.out.decode(), out.err.decode()


@pytest.fixture()
def net(tmp_path) -> str:
    return save(mlp(W1, B1, W2, B2), tmp_path / "f.onnx")


def query(tmp_path, body: str, decl: str = DECL, name: str = "q.vnnlib") -> str:
    p = tmp_path / name
    p.write_text(V2 + decl + body)
    return str(p)


def test_name_and_version(capsysbinary):
    from absint import __version__

    assert run(capsysbinary, "--name") == (0, cli.NAME + "\n", "")
    assert run(capsysbinary, "--version") == (0, __version__ + "\n", "")


def test_every_capability_has_the_standard_shape(capsysbinary):
    from vnnlib_test_solver import spec

    theories = {"--hidden-node-theories": spec.HIDDEN_NODE_THEORIES,
                "--multiple-input-output-theories": spec.MULTIPLE_INPUT_OUTPUT_THEORIES,
                "--multiple-network-theories": spec.MULTIPLE_NETWORK_THEORIES,
                "--multiple-node-comparison-theories": spec.MULTIPLE_NODE_COMPARISON_THEORIES,
                "--arithmetic-complexity-theories": spec.ARITHMETIC_COMPLEXITY_THEORIES}
    answers = {}
    for flag in cli.CAPABILITY_FLAGS:
        code, out, err = run(capsysbinary, "supports", flag)
        assert code == 0 and err == "" and out.endswith("\n") and "\r" not in out, flag
        lines = out[:-1].split("\n")
        assert all(lines), flag  # no empty line anywhere
        answers[flag] = lines
        if flag in theories:
            assert set(lines) <= theories[flag] and len(set(lines)) == len(lines), flag
        elif flag in ("--onnx-opset-versions", "--vnnlib-versions"):
            assert len(lines) == 2 and float(lines[0]) <= float(lines[1]), flag
        elif flag in ("--optimised-disjunctive-reasoning", "--serialise-assignments", "--unsat-proofs"):
            assert lines in (["true"], ["false"]), flag
        elif flag == "--onnx-element-types":
            assert set(lines) <= spec.ELEMENT_TYPES
    assert run(capsysbinary, "capabilities", "--onnx-element-types")[1] == "real\n"  # section 5.1's spelling
    assert run(capsysbinary, "supports", "--multiple-inputs-output-theories")[1] == "SIO\nMIO\n"  # 5.4.2's
    assert answers["--vnnlib-versions"] == ["1.0", "2.0"]
    assert answers["--arithmetic-complexity-theories"] == ["BND", "OUTC", "LIN"]
    assert answers["--serialise-assignments"] == ["true"]


def test_operators_come_from_the_loader_table(capsysbinary):
    from absint.frontends.onnx_loader import OP_HANDLERS, _Lowering

    out = run(capsysbinary, "supports", "--onnx-operators")[1]
    ops = out.split()
    assert ops == list(OP_HANDLERS) and {"Gemm", "Conv", "Relu", "MaxPool", "Softmax"} <= set(ops)
    assert all(callable(getattr(_Lowering, m)) for m in OP_HANDLERS.values())
    import onnx.defs

    assert all(onnx.defs.has(op) for op in ops)  # real ONNX operator names


@pytest.mark.parametrize("argv, message", [
    ([], "give --name, --version, or a command"),
    (["supports"], "needs exactly one capability"),
    (["supports", "--onnx-operators", "--vnnlib-versions"], "not allowed with"),
    (["supports", "--onnx-op"], "unrecognized arguments"),  # no abbreviations
    (["supports", "--bogus"], "unrecognized arguments"),
    (["--name", "--version"], "not allowed with"),
    (["--name", "supports", "--onnx-operators"], "cannot be combined"),
    (["verify"], "the following arguments are required"),
    (["verify", "q.vnnlib", "--timeout", "1.5"], "invalid int value"),
    (["verify", "q.vnnlib", "--timeout", "-1"], "zero or more whole seconds"),
    (["verify", "q.vnnlib", "--network", "noequals"], "<name>=<filepath>"),
    (["verify", "q.vnnlib", "--network", "f=a.onnx", "--network", "f=b.onnx"], "more than once"),
    (["verify", "a.vnnlib", "b.vnnlib"], "unrecognized arguments"),
])
def test_usage_errors_exit_2_with_a_message_on_stderr(capsysbinary, argv, message):
    code, out, err = run(capsysbinary, *argv)
    assert code == 2 and out == "" and message in err


def test_verify_unsat_sat_and_the_assignment_format(capsysbinary, tmp_path, net):
    from vnnlib_test_solver.assignments import render
    from vnnlib_test_solver.querymodel import read_query as reference_read

    # y <= 2 on the box (|x0+x1| + ... = 2 max(|x0|, |x1|) <= 2).
    q = query(tmp_path, BOX + "(assert (> Y[0,0] 2.01))")
    assert run(capsysbinary, "verify", q, "--network", f"f={net}") == (0, "unsat\n", "")  # default: bab
    q = query(tmp_path, BOX + "(assert (and (>= Y[0,0] 1.9) (>= H[0,1] 1.0)))")
    code, out, err = run(capsysbinary, "verify", q, "--network", f"f={net}", "--analysis", "deeppoly")
    assert code == 0 and out.startswith("sat\n")
    block = out[len("sat\n"):]
    from absint.vnnlib.assignments import parse_assignment

    parsed = parse_assignment(block)
    assert list(parsed) == ["X", "H", "Y"] and [t for t, _, _ in parsed.values()] == ["real"] * 3
    assert block.splitlines()[0] == "X real [1,2]" and block.splitlines()[3] == "H real [1,2]"
    x = parsed["X"][2].reshape(-1)
    h = np.maximum(np.asarray(W1) @ x, 0)
    assert np.allclose(parsed["H"][2].reshape(-1), h) and parsed["Y"][2].item() == pytest.approx(h.sum())
    assert h.sum() >= 1.9 and h[1] >= 1.0
    # Byte for byte what the standard's reference double renders for these values.
    values = {name: [float(v) for v in arr.reshape(-1)] for name, (_, _, arr) in parsed.items()}
    assert render(reference_read(Path(q)), values) == block


def test_serialised_assignments(capsysbinary, tmp_path, net):
    from onnx import TensorProto, numpy_helper

    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 1.9))")
    folder = tmp_path / "out"
    code, out, _ = run(capsysbinary, "verify", q, "--network", f"f={net}", "--serialise-assignments", str(folder),
                       "--analysis", "deeppoly")
    assert (code, out) == (0, "sat\n")
    assert sorted(p.name for p in folder.iterdir()) == ["H.pb", "X.pb", "Y.pb"]
    tensors = {}
    for name in ("X", "H", "Y"):
        t = TensorProto()
        t.ParseFromString((folder / f"{name}.pb").read_bytes())
        assert t.name == name
        tensors[name] = numpy_helper.to_array(t)
    assert tensors["X"].shape == (1, 2) and tensors["X"].dtype == np.float64
    assert tensors["Y"].item() >= 1.9


def test_error_condition_1_network_mapping(capsysbinary, tmp_path, net):
    two = DECL + "(declare-network g (equal-to f) (declare-input A real [1,2]) (declare-output B real [1,1]))\n"
    q = query(tmp_path, BOX + "(assert (== X[0,0] A[0,0]))\n(assert (>= Y[0,0] B[0,0]))", decl=two)
    for argv, message in [([], "no model given for network 'f'"),
                          (["--network", f"f={net}", "--network", f"g={net}"], "declares equal to 'f'"),
                          (["--network", f"f={net}", "--network", f"h={net}"], "does not declare"),
                          (["--network", f"h={net}"], "does not declare")]:
        code, out, err = run(capsysbinary, "verify", q, *argv)
        assert (code, out) == (2, "") and message in err, argv
    v1 = tmp_path / "p.vnnlib"
    v1.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
                  "(assert (>= Y_0 5))\n")
    code, out, err = run(capsysbinary, "verify", str(v1), "--network", f"a={net}", "--network", f"b={net}")
    assert (code, out) == (2, "") and "exactly one --network" in err


def test_error_conditions_2_and_3_element_types(capsysbinary, tmp_path, net):
    f32 = DECL.replace("real", "float32")
    q = query(tmp_path, BOX.replace("1.0", "1.0") + "(assert (>= Y[0,0] 5.0))", decl=f32)
    code, out, err = run(capsysbinary, "verify", q, "--network", f"f={net}")
    assert (code, out) == (2, "") and "declares X of network 'f' as float32" in err and "real" in err  # condition 3
    f64 = DECL.replace("real", "float64")
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 5.0))", decl=f64)
    code, out, err = run(capsysbinary, "verify", q, "--network", f"f={net}")
    assert (code, out) == (2, "") and "float64" in err and "has float32" in err  # condition 2
    # A float64 model with a float64 query: the types match, but absint is sound for real only.
    net64 = save(mlp(W1, B1, W2, B2, elem=DOUBLE), tmp_path / "f64.onnx")
    code, out, err = run(capsysbinary, "verify", q, "--network", f"f={net64}")
    assert (code, out) == (2, "") and "consent" in err


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\xff binary", "not a text file"),
    (V2.encode() + b"(declare-network f (declare-input X real [2]))", "syntax error"),
    (V2.encode() + b"(declare-network f (declare-input X real [2]) (declare-output Y real [1]))\n"
     b"(assert (<= (* X[0] X[1]) 1.0))", "Non-linear"),
    (V2.encode() + b"(declare-network f (declare-input X real [2]) (declare-output Y real [1]))\n"
     b"(assert (<= X[5] 1.0))", "out of bounds"),
])
def test_bad_queries_are_one_clear_error(capsysbinary, tmp_path, net, content, message):
    q = tmp_path / "bad.vnnlib"
    q.write_bytes(content)
    code, out, err = run(capsysbinary, "verify", str(q), "--network", f"f={net}")
    assert (code, out) == (2, "") and message in err and "bad.vnnlib" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_missing_files_are_errors(capsysbinary, tmp_path, net):
    code, out, err = run(capsysbinary, "verify", str(tmp_path / "none.vnnlib"), "--network", f"f={net}")
    assert (code, out) == (2, "") and "none.vnnlib" in err
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 5.0))")
    code, out, err = run(capsysbinary, "verify", q, "--network", f"f={tmp_path / 'none.onnx'}")
    assert (code, out) == (2, "") and "none.onnx" in err


def test_timeout_zero_answers_timed_out(capsysbinary, tmp_path, net):
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 1.0))")
    assert run(capsysbinary, "verify", q, "--network", f"f={net}", "--timeout", "0")[:2] == (0, "timed-out\n")


def test_watchdog_answers_timed_out_when_the_analysis_overruns(tmp_path, net):
    """A solver stuck past --timeout still answers: the watchdog prints timed-out and exits 0."""
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 1.0))")
    script = ("import sys, time\nimport absint.vnnlib.solver as s\n"
              "s.solve = lambda *a, **k: time.sleep(600)\n"
              "from absint.vnnlib.cli import main\n"
              f"sys.exit(main(['verify', {q!r}, '--network', 'f={net}', '--timeout', '1']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                          env={**_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout == b"timed-out\n"
    assert b"time limit" in proc.stderr


def test_module_entry_point_runs_as_a_program(tmp_path, net):
    proc = subprocess.run([sys.executable, "-m", "absint.vnnlib.cli", "supports", "--vnnlib-versions"],
                          capture_output=True, timeout=300, env={**_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout == b"1.0\n2.0\n"


def _env() -> dict:
    import os

    return dict(os.environ)


def test_parse_vnnlib_refuses_non_real_types_as_the_solver_does(tmp_path):
    """``absint verify --vnnlib`` (``parse_vnnlib``) once accepted a float32 query the solver refuses."""
    from absint.errors import SpecError
    from absint.vnnlib import parse_vnnlib

    decl = "(declare-network f (declare-input X float32 [1,2]) (declare-output Y float32 [1,1]))\n"
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 5.0))", decl=decl)
    with pytest.raises(SpecError, match="as float32"):
        parse_vnnlib(q)
    ok = query(tmp_path, BOX + "(assert (>= Y[0,0] 5.0))", decl=decl.replace("float32", "real"))
    assert len(parse_vnnlib(ok).instances) == 1


def test_assignments_alias_and_empty_query_path(capsysbinary, tmp_path, net):
    """The reference solver double accepts ``--assignments`` (the standard's usage block) and refuses
    an empty query path; absint-vnnlib rejected the first and blamed a directory for the second."""
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 1.9))")
    folder = tmp_path / "alias"
    code, out, _ = run(capsysbinary, "verify", q, "--network", f"f={net}", "--assignments", str(folder),
                       "--analysis", "deeppoly")
    assert (code, out) == (0, "sat\n") and (folder / "X.pb").exists()
    code, out, err = run(capsysbinary, "verify", "", "--network", f"f={net}")
    assert (code, out) == (2, "") and "must not be empty" in err


def test_a_timeout_beyond_1e9_seconds_means_no_limit(capsysbinary, tmp_path, net):
    """``--timeout 99999999999`` once killed the watchdog thread with OverflowError (time_t)."""
    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 1.9))")
    code, out, err = run(capsysbinary, "verify", q, "--network", f"f={net}", "--timeout", "99999999999",
                         "--analysis", "deeppoly")
    assert code == 0 and out.startswith("sat\n") and "Traceback" not in err and "OverflowError" not in err


def test_the_time_limit_counts_from_the_process_start(capsysbinary, tmp_path, net):
    """The console script's ``--timeout`` starts when the process started (interpreter start-up and
    imports count, as for the harness that launched it): a start already ``--timeout`` seconds in the
    past answers ``timed-out`` before any work; ``process_started`` lies before "now" by at least the
    time the process has provably existed."""
    import time

    from absint.timelimit import process_started

    q = query(tmp_path, BOX + "(assert (>= Y[0,0] 1.9))")
    past = time.perf_counter() - 5.0
    assert cli.main(["verify", q, "--network", f"f={net}", "--timeout", "5"], start=past) == 0
    assert capsysbinary.readouterr().out == b"timed-out\n"
    assert cli.main(["verify", q, "--network", f"f={net}", "--timeout", "60", "--analysis", "deeppoly"],
                    start=time.perf_counter()) == 0
    assert capsysbinary.readouterr().out.startswith(b"sat\n")
    assert process_started() <= time.perf_counter()
    script = ("import time\ntime.sleep(0.5)\nfrom absint.timelimit import process_started\n"
              "print(time.perf_counter() - process_started())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                          env={**_env(), "PYTHONPATH": str(ROOT)})
    age = float(proc.stdout)
    if sys.platform.startswith("linux"):
        assert age >= 0.49  # slept 0.5 s after starting; /proc's clock ticks are 10 ms
    else:
        assert age >= 0.0
