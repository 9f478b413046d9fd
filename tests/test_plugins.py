"""Plugin discovery and registration (absint.plugins) and `absint list`.

In-process tests replace the entry-point source (``plugins._entry_points``) with hand-made entry
points; one subprocess test puts a real ``*.dist-info`` with ``entry_points.txt`` on the path,
which is exactly what ``pip install`` of a plugin leaves behind.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import textwrap
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import absint
from absint import analyses, plugins
from absint.analyses import UnknownAnalysisError, get_analysis, mark_unavailable
from absint.cli import main
from absint.ir import Affine, Graph, Input, Relu
from absint.linear import DenseOperator
from absint.plugins import PluginError, PluginWarning, register_domain, unregister_domain
from absint.specs import InputBox, robustness_property
from absint.domains.box import BoxDomain

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
import absint.linear  # absint first, then domains
from absint.domains.box import BoxDomain
from absint.solvers.base import Backend


class FakeDomain(BoxDomain):
    name = "fakedom"
    description = "a test plugin domain"


class Shadow(BoxDomain):
    name = "box"
    description = "tries to shadow the built-in box"


class Mismatch(BoxDomain):
    name = "another_name"


NOT_A_CLASS = 3


class FakeSolver(Backend):
    name = "fakesolver"

    @classmethod
    def availability(cls):
        return False, "licence file missing"

    def solve(self, model, options=None):
        raise RuntimeError("unavailable")


class ShadowSolver(FakeSolver):
    name = "highs"
'''


@pytest.fixture
def registry():
    """Restore every registry (domains, analyses, solvers, plugin records) after the test."""
    dicts = [plugins._DOMAINS, plugins._DOMAIN_ORIGINS, plugins._DEFAULT_ANALYSES, plugins._SOLVERS,
             plugins._SOLVER_ORIGINS, plugins._INFOS, analyses._ANALYSES, analyses._UNAVAILABLE]
    saved = [dict(d) for d in dicts]
    flags = plugins._LOADED, plugins._SOLVERS_LOADED
    modules = set(sys.modules)
    yield plugins
    for d, s in zip(dicts, saved):
        d.clear()
        d.update(s)
    plugins._LOADED, plugins._SOLVERS_LOADED = flags
    for name in set(sys.modules) - modules:
        if name.startswith("fake_plugin"):
            del sys.modules[name]


@pytest.fixture
def fake_eps(tmp_path, monkeypatch, registry):
    """Install hand-made entry points: returns ``set_eps(domains=[(name, value)], solvers=[...])``."""
    (tmp_path / "fake_plugin_mod.py").write_text(PLUGIN_MODULE)
    (tmp_path / "fake_plugin_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "fake_plugin_needs_dep.py").write_text("import some_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def set_eps(domains=(), solvers=()):
        table = {plugins.DOMAIN_GROUP: [metadata.EntryPoint(n, v, plugins.DOMAIN_GROUP) for n, v in domains],
                 plugins.SOLVER_GROUP: [metadata.EntryPoint(n, v, plugins.SOLVER_GROUP) for n, v in solvers]}
        monkeypatch.setattr(plugins, "_entry_points", lambda group: list(table[group]))

    return set_eps


def _listing(capsys) -> str:
    assert main(["list"]) == 0
    return capsys.readouterr().out


# -- built-ins through entry points ------------------------------------------------------------
def _setup_cfg_entry_points(group: str) -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    raw = cfg.get("options.entry_points", group, fallback="")
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in raw.strip().splitlines() if "=" in line)}


def test_builtin_domains_match_setup_cfg_entry_points() -> None:
    declared = _setup_cfg_entry_points(plugins.DOMAIN_GROUP)
    assert "box" in declared
    domains = plugins.available_domains()
    for name, target in declared.items():
        assert name in domains, f"setup.cfg declares domain {name!r} but it is not registered"
        module, attr = target.split(":")
        assert f"{domains[name].__module__}:{domains[name].__qualname__}" == f"{module}:{attr}"
        assert plugins.domain_origin(name) == "built-in"
        assert name in absint.available_analyses()
    # ... and every built-in that _register_builtins() imports is declared in setup.cfg.
    builtin = {n for n in domains if plugins.domain_origin(n) == "built-in"}
    assert builtin <= set(declared), f"add {sorted(builtin - set(declared))} to setup.cfg [absint.domains]"


def test_builtin_solvers_match_setup_cfg_entry_points() -> None:
    declared = _setup_cfg_entry_points(plugins.SOLVER_GROUP)
    assert set(declared) >= {"highs", "gurobi", "scipy"}
    solvers = plugins.available_solvers()
    for name, target in declared.items():
        assert f"{solvers[name].__module__}:{solvers[name].__qualname__}" == target
    status = plugins.solver_status()
    assert status["highs"][0] is True and isinstance(status["gurobi"][1], str)


def test_installed_metadata_entry_points_are_marked_builtin() -> None:
    eps = [ep for ep in plugins._entry_points(plugins.DOMAIN_GROUP) if ep.name == "box"]
    if not eps:
        pytest.skip("absint's package metadata is not installed (source tree): the fallback registered box")
    assert plugins._distribution(eps[0])[0] == plugins.BUILTIN_DISTRIBUTION


def test_fallback_registers_builtins_without_metadata(fake_eps) -> None:
    fake_eps()  # no entry points at all, as when running from a source tree without install
    for name in list(plugins._DOMAINS):
        unregister_domain(name)
    plugins.load_plugins(reload=True)
    assert plugins.available_domains()["box"] is BoxDomain
    assert plugins.domain_origin("box") == "built-in"
    assert "box" in absint.available_analyses()


# -- third-party entry points ----------------------------------------------------------------
def test_entry_point_plugin_is_discovered_and_usable(fake_eps, capsys) -> None:
    fake_eps(domains=[("fakedom", "fake_plugin_mod:FakeDomain")],
             solvers=[("fakesolver", "fake_plugin_mod:FakeSolver")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good plugin loads without any warning
        plugins.load_plugins(reload=True)
        plugins._load_solvers(reload=True)
    assert plugins.available_domains()["fakedom"].__module__ == "fake_plugin_mod"
    assert type(get_analysis("fakedom", device="cpu")).__name__ == "FakeDomainAnalysis"
    assert plugins.solver_status()["fakesolver"] == (False, "licence file missing")
    out = _listing(capsys)
    assert "fakedom" in out and "a test plugin domain" in out
    assert "fakesolver   unavailable: licence file missing" in out


@pytest.mark.parametrize("value,expected", [
    ("fake_plugin_broken:Broken", "boom at import"),
    ("fake_plugin_needs_dep:X", "some_missing_dependency_xyz"),
    ("fake_plugin_no_such_module:X", "fake_plugin_no_such_module"),
    ("fake_plugin_mod:NoSuchAttr", "NoSuchAttr"),
    ("fake_plugin_mod:NOT_A_CLASS", "not a class"),
    ("fake_plugin_mod:Mismatch", "differs from the class's name"),
])
def test_failing_plugin_warns_and_is_reported(fake_eps, capsys, value: str, expected: str) -> None:
    fake_eps(domains=[("brokenplug", value), ("fakedom", "fake_plugin_mod:FakeDomain")])
    with pytest.warns(PluginWarning, match="brokenplug") as record:
        plugins.load_plugins(reload=True)  # never raises
    assert expected in str(record[0].message)
    assert "fakedom" in plugins.available_domains()  # the good plugin next to it still loads
    assert "brokenplug" not in plugins.available_domains()
    with pytest.raises(UnknownAnalysisError, match="not available: .*brokenplug"):
        get_analysis("brokenplug")
    out = _listing(capsys)
    assert "brokenplug   unavailable:" in out and "plugins not loaded:" in out


def test_plugin_cannot_shadow_a_builtin(fake_eps, capsys) -> None:
    fake_eps(domains=[("box", "fake_plugin_mod:Shadow")], solvers=[("highs", "fake_plugin_mod:ShadowSolver")])
    with pytest.warns(PluginWarning, match="'box'.*ignored.*already taken"):
        plugins.load_plugins(reload=True)
    with pytest.warns(PluginWarning, match="'highs'.*ignored"):
        plugins._load_solvers(reload=True)
    assert plugins.available_domains()["box"] is BoxDomain
    assert plugins.available_solvers()["highs"].__module__ == "absint.solvers.highs_backend"
    assert "box" not in analyses._UNAVAILABLE
    out = _listing(capsys)
    assert "ignored" in out and "box          intervals per neuron" in out


def test_plugin_cannot_take_the_name_of_an_analysis(fake_eps) -> None:
    absint.register_analysis("fakedom", lambda **kw: None)
    fake_eps(domains=[("fakedom", "fake_plugin_mod:FakeDomain")])
    with pytest.warns(PluginWarning, match="taken by an analysis"):
        plugins.load_plugins(reload=True)
    assert "fakedom" not in plugins.available_domains()


# -- register_domain ---------------------------------------------------------------------------
class _Tiny(BoxDomain):
    name = "t_tiny_box"
    description = "Box, registered at run time"


def _tiny_net() -> Graph:
    w1 = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    return Graph((Input("x", (), (2,)), Affine("a", ("x",), (2,), operator=DenseOperator(w1)),
                  Relu("r", ("a",), (2,)),
                  Affine("y", ("r",), (3,), operator=DenseOperator(w2), bias=torch.tensor([3.0, 0.0, 0.0]))), "y")


def test_register_domain_makes_an_analysis_usable_in_verify(registry) -> None:
    assert register_domain(_Tiny) is _Tiny
    assert plugins.domain_origin("t_tiny_box") == "register_domain()"
    region = InputBox(np.array([0.1, 0.1]), np.array([0.2, 0.2]))
    result = absint.verify(_tiny_net(), (region, robustness_property(0, 3)), analysis="t_tiny_box", attack=False)
    assert result.verified and result.analysis == "t_tiny_box"
    unregister_domain("t_tiny_box")
    assert "t_tiny_box" not in absint.available_analyses()


def test_register_domain_refuses_silent_shadowing(registry) -> None:
    class Other(BoxDomain):
        name = "box"

    with pytest.raises(PluginError, match="already registered"):
        register_domain(Other)
    assert plugins.available_domains()["box"] is BoxDomain
    register_domain(BoxDomain)  # the same class again is a no-op
    register_domain(Other, replace=True)  # explicit replacement is allowed (and logged)
    assert plugins.available_domains()["box"] is Other
    assert get_analysis("box", device="cpu").domain_class is Other


def test_register_domain_validates(registry) -> None:
    class NoName(BoxDomain):
        name = ""

    with pytest.raises(PluginError, match="non-empty"):
        register_domain(NoName)
    with pytest.raises(PluginError, match="not a subclass"):
        register_domain(int)  # type: ignore[arg-type]
    absint.register_analysis("t_taken", lambda **kw: None)

    class Taken(BoxDomain):
        name = "t_taken"

    with pytest.raises(PluginError, match="taken by an analysis"):
        register_domain(Taken)


def test_register_domain_keeps_a_custom_analysis_of_the_same_name(registry) -> None:
    register_domain(_Tiny)
    custom = type("Custom", (plugins._DEFAULT_ANALYSES["t_tiny_box"],), {})
    absint.register_analysis("t_tiny_box", custom, replace=True)  # e.g. a tuned preset by the author
    register_domain(_Tiny)
    plugins.load_plugins(reload=True)
    assert absint.available_analyses()["t_tiny_box"] is custom
    # ... also when the preset is registered before the domain.
    unregister_domain("t_tiny_box")
    absint.register_analysis("t_tiny_box", custom, replace=True)
    register_domain(_Tiny)
    assert absint.available_analyses()["t_tiny_box"] is custom and "t_tiny_box" in plugins.available_domains()


def test_get_domain(registry) -> None:
    assert plugins.get_domain("box") is BoxDomain
    mark_unavailable("t_needs_cvxpy", "cvxpy is not installed (pip install absint[sdp])")
    with pytest.raises(PluginError, match="cvxpy is not installed"):
        plugins.get_domain("t_needs_cvxpy")
    with pytest.raises(PluginError, match="unknown domain"):
        plugins.get_domain("t_nothing")


# -- absint list -------------------------------------------------------------------------------
def test_absint_list(registry, capsys) -> None:
    mark_unavailable("t_fancy", "needs cvxpy (pip install absint[sdp])")
    out = _listing(capsys)
    sections = [line for line in out.splitlines() if not line.startswith(" ")]
    assert sections[:3] == ["domains:", "analyses:", "solvers:"]
    assert "box          intervals per neuron" in out and "[built-in]" in out
    assert "t_fancy      unavailable: needs cvxpy (pip install absint[sdp])" in out
    for name in ("highs", "gurobi", "scipy"):
        assert f"  {name:<12} " in out
    assert main(["list", "-v"]) == 0
    assert "absint.domains.box.BoxDomain" in capsys.readouterr().out


# -- end to end: a real dist-info on the path, as `pip install` leaves it -----------------------
def test_installed_plugin_end_to_end(tmp_path) -> None:
    site = tmp_path / "site"
    info = site / "fakeplug-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "fake_plugin_mod.py").write_text(PLUGIN_MODULE)
    (site / "fake_plugin_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [absint.domains]
        fakedom = fake_plugin_mod:FakeDomain
        brokenplug = fake_plugin_broken:Broken
        box = fake_plugin_mod:Shadow

        [absint.solvers]
        fakesolver = fake_plugin_mod:FakeSolver
        """))
    code = textwrap.dedent("""\
        import numpy as np, absint
        from absint.cli import main
        from absint.specs import InputBox, robustness_property
        main(["list"])
        print("ORIGIN", absint.plugins.domain_origin("fakedom"))
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="always")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out, err = proc.stdout, proc.stderr
    assert "fakedom      a test plugin domain  [fakeplug 1.0]" in out
    assert "ORIGIN fakeplug 1.0" in out
    assert "PluginWarning" in err and "brokenplug" in err and "boom at import" in err
    assert "'box'" in err and "already taken" in err
    assert "box          intervals per neuron" in out  # the built-in, not the shadow
    assert "brokenplug   unavailable:" in out
    assert "fakesolver   unavailable: licence file missing" in out


def test_example_plugin_from_source_registers_and_verifies(registry) -> None:
    """examples/absint-symint imported from its source path (works whether or not it is installed)."""
    sys.path.insert(0, str(ROOT / "examples" / "absint-symint"))
    try:
        from absint_symint import SymIntDomain
    finally:
        sys.path.remove(str(ROOT / "examples" / "absint-symint"))
    if plugins.available_domains().get("symint") is not SymIntDomain:
        unregister_domain("symint")
        register_domain(SymIntDomain)
    region = InputBox(np.array([-0.3, 0.1]), np.array([0.3, 0.2]))
    prop = robustness_property(0, 3)
    sym = absint.verify(_tiny_net(), (region, prop), analysis="symint", attack=False)
    box = absint.verify(_tiny_net(), (region, prop), analysis="box", attack=False)
    assert sym.verified and sym.margin >= box.margin
