"""The registry (absint.registry): lazy discovery, start-up cost in modules, run-time registrations
reaching spawned workers, extras, and the options objects every analysis takes."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import absint
from absint import registry
from absint.analyses import analysis_names, get_analysis
from absint.errors import OptionError, PluginError, UnknownAnalysisError
from absint.options import Options

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "scipy", "highspy", "onnx", "onnxruntime", "cvxpy", "gurobipy", "cdd")


def _run(code: str, tmp_path: Path, extra_path: str = "") -> tuple[set[str], str]:
    """Run ``code`` in a fresh interpreter: (the modules it loaded, its output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra_path, str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    script = textwrap.dedent(code) + "\nimport sys\nprint('MODULES', ' '.join(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES "))
    return set(line.split()[1:]), proc.stdout


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    return _run(code, tmp_path)[0]


def _top(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


# -- start-up: which modules get loaded ------------------------------------------------------------
def test_import_absint_loads_no_heavy_module(tmp_path) -> None:
    mods = _modules_after("import absint", tmp_path)
    assert not _top(mods) & set(HEAVY), sorted(_top(mods) & set(HEAVY))
    assert {m for m in mods if m.startswith("absint")} == {"absint", "absint.errors"}


def test_cli_help_and_list_load_no_heavy_module(tmp_path) -> None:
    for argv in (["--help"], ["list"], ["list", "-v"]):
        mods = _modules_after(f"""
            from absint.cli import main
            try:
                main({argv!r})
            except SystemExit:
                pass
            """, tmp_path)
        assert not _top(mods) & set(HEAVY), (argv, sorted(_top(mods) & set(HEAVY)))
        assert not any(m.startswith(("absint.domains.", "absint.solvers.", "absint.bab", "absint.refine")) for m in mods)


def test_using_verify_loads_no_solver_or_onnx(tmp_path) -> None:
    """A Box/DeepPoly run on a torch-built network needs torch and numpy, not scipy, HiGHS, ONNX or cvxpy."""
    mods = _modules_after("""
        import numpy as np, torch, absint
        net = absint.load_network(torch.nn.Sequential(torch.nn.Linear(2, 3)), input_shape=(2,))
        spec = (absint.InputBox(np.zeros(2), np.ones(2) * 0.1), absint.robustness_property(0, 3))
        absint.verify(net, spec, analysis="deeppoly", attack=False)
        """, tmp_path)
    assert not _top(mods) & {"highspy", "onnx", "onnxruntime", "cvxpy", "gurobipy"}, sorted(_top(mods))
    assert not any(m.startswith(("absint.solvers.", "absint.refine", "absint.bab", "absint.sdp")) for m in mods)


# -- descriptions without imports tell the truth -------------------------------------------------
@pytest.mark.parametrize("group", registry.GROUPS)
def test_static_descriptions_match_the_classes(group: str) -> None:
    for entry in registry.entries(group):
        if entry.status != "declared" or not entry.builtin:
            continue
        static = registry.describe(entry)
        cls = registry.get(group, entry.name)
        assert static and static == registry.describe(entry), (entry.name, static)
        assert static == (getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0])


# -- extras declared on entry points ---------------------------------------------------------------
def test_entry_point_extras_that_are_missing_make_it_unavailable_without_import(tmp_path) -> None:
    site = tmp_path / "site"
    info = site / "fancyplug-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "fancy_plugin_mod.py").write_text("raise RuntimeError('must not be imported')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fancyplug\nVersion: 1.0\n"
                                   "Requires-Dist: no-such-distribution-xyz ; extra == 'fancy'\n")
    (info / "entry_points.txt").write_text("[absint.analyses]\nfancy = fancy_plugin_mod:Fancy [fancy]\n")
    mods, out = _run("""
        from absint.cli import main
        from absint.analyses import get_analysis
        from absint.errors import UnknownAnalysisError
        main(["list"])
        try:
            get_analysis("fancy")
        except UnknownAnalysisError as exc:
            print("ERROR", exc)
        """, tmp_path, extra_path=str(site))
    assert "fancy_plugin_mod" not in mods
    why = "needs no-such-distribution-xyz (pip install 'fancyplug[fancy]')"
    assert f"fancy        unavailable: {why}" in out
    assert f"ERROR analysis 'fancy' is not available: {why}" in out


# -- run-time registrations reach spawned workers ---------------------------------------------------
SPAWN_MODULE = '''
from absint.domains.box import BoxDomain


class SpawnBox(BoxDomain):
    name = "t_spawn_box"
    description = "registered at run time in the parent"
'''


def _worker_view() -> tuple[list[str], str]:
    from absint.analyses import analysis_names, get_analysis

    return analysis_names(), type(get_analysis("t_spawn_box", device="cpu").domain).__module__


def test_runtime_registration_reaches_spawned_workers(tmp_path, monkeypatch) -> None:
    from absint.bench.worker import init_worker

    (tmp_path / "t_spawn_plugin.py").write_text(SPAWN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = registry.snapshot()
    try:
        from t_spawn_plugin import SpawnBox

        registry.register_domain(SpawnBox)
        regs = registry.runtime_registrations()
        assert (registry.DOMAINS, "t_spawn_plugin:SpawnBox", False) in regs
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=init_worker,
                                 initargs=(1, logging.WARNING, regs)) as ex:
            names, module = ex.submit(_worker_view).result(timeout=300)
        assert "t_spawn_box" in names and module == "t_spawn_plugin"
    finally:
        registry.restore(saved)
        sys.modules.pop("t_spawn_plugin", None)


def test_a_class_that_workers_cannot_import_is_refused_early() -> None:
    from absint.domains.box import BoxDomain

    class Local(BoxDomain):
        name = "t_local_box"

    saved = registry.snapshot()
    try:
        registry.register_domain(Local)
        with pytest.raises(PluginError, match="cannot be imported by a worker"):
            registry.runtime_registrations()
    finally:
        registry.restore(saved)


# -- one options object per analysis, one error type -------------------------------------------------
BUILTIN_ANALYSES = sorted(set(registry.BUILTINS[registry.ANALYSES]) | set(registry.BUILTINS[registry.DOMAINS]))


@pytest.mark.parametrize("name", BUILTIN_ANALYSES)
def test_every_analysis_takes_one_options_object(name: str) -> None:
    try:
        an = get_analysis(name, device="cpu")
    except UnknownAnalysisError as exc:  # an optional dependency missing here (sdp-exact without cvxpy)
        pytest.skip(str(exc))
    assert isinstance(an.options, Options) and isinstance(an.options, type(an).options_class)
    # the object and the keywords are the same thing
    again = get_analysis(name, an.options, device="cpu")
    assert again.options == an.options
    with pytest.raises(OptionError, match="does not take the option"):
        get_analysis(name, device="cpu", no_such_option=1)
    with pytest.raises(OptionError):
        get_analysis(name, object(), device="cpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("name,options", [
    ("bab", {"split": "diagonal"}), ("bab", {"batch_size": 0}), ("bab", {"attack": "yes"}),
    ("alphapoly", {"iters": 2.5}), ("sdp", {"solver": "magic"}), ("sdp", {"tol": -1.0}),
    ("refinepoly", {"timeout_lp": "fast"}), ("lp", {"final": "qp"}), ("deeppoly", {"domain_options": 3}),
])
def test_ill_typed_or_out_of_range_options_raise_option_error(name: str, options: dict) -> None:
    with pytest.raises(OptionError):
        get_analysis(name, device="cpu", **options)


def test_option_error_is_a_type_and_value_error() -> None:
    assert issubclass(OptionError, TypeError) and issubclass(OptionError, ValueError)
    assert issubclass(OptionError, absint.AbsintError)


def test_analysis_names_need_no_import() -> None:
    names = analysis_names()
    assert {"box", "deeppoly", "bab", "refinepoly", "sdp-fo"} <= set(names)


@pytest.mark.parametrize("name, opts, message", [
    ("bab", {"seed": -1}, "≥ 0"), ("refinezono", {"tighten.max_neurons": 0}, "≥ 1"),
    ("kpoly", {"multineuron.final_iters": -1}, "≥ 0"), ("kpoly", {"multineuron.lr_alpha": float("nan")}, "NaN"),
    ("alphapoly", {"lr": float("inf")}, "finite number > 0"), ("refinepoly", {"slopes.iters": -1}, "≥ 0"),
    ("sdp-exact", {"backend": "x"}, "backend must be"), ("bab", {"workers": 0}, "≥ 1"),
    ("lp", {"workers": 10**6}, "at most")])
def test_option_values_out_of_range_are_refused_when_built(name, opts, message):
    """Found by fuzzing: these were accepted and failed inside the run (a numpy traceback, a stage
    failing with ``range() arg 3 must not be zero``, NaN slopes, an SDP backend error)."""
    from absint.analyses import get_analysis
    from absint.errors import OptionError

    with pytest.raises(OptionError, match=message):
        get_analysis(name, **opts)
