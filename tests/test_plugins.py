"""Plugin discovery and registration (absint.registry) and `absint list`.

In-process tests replace the entry-point source (``registry._entry_points``) with hand-made entry
points; subprocess tests put a real ``*.dist-info`` with ``entry_points.txt`` on the path, which is
exactly what ``pip install`` of a plugin leaves behind.
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
from absint import analyses, registry
from absint.analyses import DomainAnalysis, domain_analysis, get_analysis
from absint.cli import main
from absint.errors import PluginError, UnknownAnalysisError, UnknownDomainError
from absint.ir import Affine, Graph, Input, Relu
from absint.linear import DenseOperator
from absint.registry import PluginWarning, register_domain, unregister_domain
from absint.specs import InputBox, robustness_property
from absint.domains.box import BoxDomain

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
from absint.domains.box import BoxDomain
from absint.solvers.base import Backend
from absint.solvers.highs_backend import HighsBackend


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


SOLVES = []


class CountingSolver(Backend):
    """HiGHS behind a counter (no warm-started session): proves that analyses reach a plugin
    solver by name."""

    name = "countingsolver"
    description = "HiGHS, counting solves"

    @classmethod
    def availability(cls):
        return True, "a test double"

    def solve(self, model, options=None):
        SOLVES.append(model.num_vars)
        return HighsBackend().solve(model, options)
'''


@pytest.fixture
def reg():
    """Restore the whole registry after the test."""
    saved = registry.snapshot()
    modules = set(sys.modules)
    yield registry
    registry.restore(saved)
    for name in set(sys.modules) - modules:
        if name.startswith("fake_plugin"):
            del sys.modules[name]


@pytest.fixture
def fake_eps(tmp_path, monkeypatch, reg):
    """Install hand-made entry points: ``set_eps(domains=[(name, value)], solvers=[...], analyses=[...])``
    (they replace the installed metadata, so the built-ins come from the fallback table)."""
    (tmp_path / "fake_plugin_mod.py").write_text(PLUGIN_MODULE)
    (tmp_path / "fake_plugin_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "fake_plugin_needs_dep.py").write_text("import some_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def set_eps(domains=(), solvers=(), analyses=()):
        table = {registry.DOMAINS: domains, registry.SOLVERS: solvers, registry.ANALYSES: analyses}
        monkeypatch.setattr(registry, "_entry_points",
                            lambda group: [metadata.EntryPoint(n, v, group) for n, v in table[group]])
        registry.reload()

    return set_eps


def _listing(capsys, *args: str) -> str:
    assert main(["list", *args]) == 0
    return capsys.readouterr().out


# -- built-ins through entry points ------------------------------------------------------------
def _setup_cfg_entry_points(group: str) -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    raw = cfg.get("options.entry_points", group, fallback="")
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in raw.strip().splitlines() if "=" in line)}


@pytest.mark.parametrize("group", registry.GROUPS)
def test_builtins_match_setup_cfg_entry_points(group: str) -> None:
    """setup.cfg's entry points and the registry's fallback table name the same classes."""
    declared = _setup_cfg_entry_points(group)
    assert declared == registry.BUILTINS[group]
    for name, value in declared.items():
        target = value.split(" [")[0]
        cls = registry.get(group, name) if not (group == registry.SOLVERS and name == "gurobi") else None
        if cls is not None:
            assert f"{cls.__module__}:{cls.__qualname__}" == target
            assert cls.name == name
        assert registry.origin(group, name) == "built-in"


def test_every_domain_is_an_analysis() -> None:
    for name, cls in registry.available_domains().items():
        an = absint.available_analyses()[name]
        assert issubclass(an, DomainAnalysis) and an.domain_class is cls


def test_installed_metadata_entry_points_are_marked_builtin() -> None:
    eps = [ep for ep in registry._entry_points(registry.DOMAINS) if ep.name == "box"]
    if not eps:
        pytest.skip("absint's package metadata is not installed (source tree): the fallback registered box")
    assert registry._distribution(eps[0])[0] == registry.BUILTIN_DISTRIBUTION


def test_fallback_registers_builtins_without_metadata(fake_eps) -> None:
    fake_eps()  # no entry points at all, as when running from a source tree without install
    assert registry.available_domains()["box"] is BoxDomain
    assert registry.domain_origin("box") == "built-in"
    assert "box" in absint.available_analyses() and "bab" in absint.available_analyses()


# -- third-party entry points ----------------------------------------------------------------
def test_entry_point_plugin_is_discovered_and_usable(fake_eps, capsys) -> None:
    fake_eps(domains=[("fakedom", "fake_plugin_mod:FakeDomain")],
             solvers=[("fakesolver", "fake_plugin_mod:FakeSolver")])
    assert "fake_plugin_mod" not in sys.modules  # discovery imports nothing
    assert "fakedom" in analyses.analysis_names()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good plugin loads without any warning
        assert registry.available_domains()["fakedom"].__module__ == "fake_plugin_mod"
    assert type(get_analysis("fakedom", device="cpu")).__name__ == "FakeDomainAnalysis"
    from absint.solvers import available_backends

    assert available_backends()["fakesolver"] == (False, "licence file missing")
    out = _listing(capsys, "--check")
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
        domains = registry.available_domains()  # never raises
    assert expected in str(record[0].message)
    assert "fakedom" in domains and "brokenplug" not in domains  # the good plugin next to it still loads
    with pytest.raises(UnknownAnalysisError, match="not available: .*brokenplug"):
        get_analysis("brokenplug")
    out = _listing(capsys, "--check")
    assert "brokenplug   unavailable:" in out and "plugins not loaded:" in out


def test_plugin_cannot_shadow_a_builtin(fake_eps, capsys) -> None:
    with pytest.warns(PluginWarning) as record:
        fake_eps(domains=[("box", "fake_plugin_mod:Shadow")], solvers=[("highs", "fake_plugin_mod:ShadowSolver")])
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and all("ignored" in m and "already taken" in m for m in messages)
    assert "'box'" in messages[0] and "'highs'" in messages[1]
    assert registry.available_domains()["box"] is BoxDomain
    assert registry.available_solvers()["highs"].__module__ == "absint.solvers.highs_backend"
    assert "fake_plugin_mod" not in sys.modules  # the shadowing entry points were never imported
    out = _listing(capsys)
    assert "ignored" in out and "box          intervals per neuron" in out


def test_plugin_domain_cannot_take_the_name_of_an_analysis(fake_eps) -> None:
    with pytest.warns(PluginWarning, match="'bab'.*taken by the analysis"):
        fake_eps(domains=[("bab", "fake_plugin_mod:FakeDomain")])
    assert "bab" not in registry.available_domains()
    assert get_analysis("bab").name == "bab"


def test_plugin_solver_resolves_by_name(fake_eps) -> None:
    fake_eps(solvers=[("countingsolver", "fake_plugin_mod:CountingSolver")])
    from absint.solvers import LinearModel, get_backend

    backend = get_backend("countingsolver")
    assert type(backend).__name__ == "CountingSolver"
    m = LinearModel()
    m.add_vars(lb=[0, 0], ub=[1, 1])
    m.set_objective([1.0, 2.0], "max")
    assert backend.solve(m).proved_bound == pytest.approx(3.0)
    assert sys.modules["fake_plugin_mod"].SOLVES == [2]


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


def test_register_domain_makes_an_analysis_usable_in_verify(reg) -> None:
    assert register_domain(_Tiny) is _Tiny
    assert registry.domain_origin("t_tiny_box") == "run time"
    region = InputBox(np.array([0.1, 0.1]), np.array([0.2, 0.2]))
    result = absint.verify(_tiny_net(), (region, robustness_property(0, 3)), analysis="t_tiny_box", attack=False)
    assert result.verified and result.analysis == "t_tiny_box"
    unregister_domain("t_tiny_box")
    assert "t_tiny_box" not in absint.available_analyses()


def test_register_domain_refuses_silent_shadowing(reg) -> None:
    class Other(BoxDomain):
        name = "box"

    with pytest.raises(PluginError, match="already registered"):
        register_domain(Other)
    assert registry.available_domains()["box"] is BoxDomain
    register_domain(BoxDomain)  # the same class again is a no-op
    register_domain(Other, replace=True)  # explicit replacement is allowed (and logged)
    assert registry.available_domains()["box"] is Other
    assert get_analysis("box", device="cpu").domain_class is Other


class _TakenAnalysis(DomainAnalysis):
    name = "t_taken"
    domain_class = BoxDomain


def test_register_domain_validates(reg) -> None:
    class NoName(BoxDomain):
        name = ""

    with pytest.raises(PluginError, match="non-empty"):
        register_domain(NoName)
    with pytest.raises(PluginError, match="not a class|not a subclass"):
        register_domain(int)  # type: ignore[arg-type]
    absint.register_analysis(_TakenAnalysis)

    class Taken(BoxDomain):
        name = "t_taken"

    with pytest.raises(PluginError, match="taken by the analysis"):
        register_domain(Taken)


def test_register_domain_keeps_a_custom_analysis_of_the_same_name(reg) -> None:
    register_domain(_Tiny)
    custom = type("Custom", (domain_analysis(_Tiny),), {})
    absint.register_analysis(custom, replace=True)  # e.g. a tuned preset by the domain's author
    register_domain(_Tiny)
    registry.reload()
    assert absint.available_analyses()["t_tiny_box"] is custom
    # ... also when the preset is registered before the domain.
    unregister_domain("t_tiny_box")
    registry.unregister_analysis("t_tiny_box")
    absint.register_analysis(custom)
    register_domain(_Tiny)
    assert absint.available_analyses()["t_tiny_box"] is custom and "t_tiny_box" in registry.available_domains()


def test_get_domain(reg) -> None:
    assert registry.get_domain("box") is BoxDomain
    registry.mark_unavailable(registry.DOMAINS, "t_needs_cvxpy", "cvxpy is not installed (pip install absint[sdp])")
    with pytest.raises(UnknownDomainError, match="cvxpy is not installed"):
        registry.get_domain("t_needs_cvxpy")
    with pytest.raises(UnknownDomainError, match="unknown domain"):
        registry.get_domain("t_nothing")


# -- absint list -------------------------------------------------------------------------------
def test_absint_list(reg, capsys) -> None:
    registry.mark_unavailable(registry.ANALYSES, "t_fancy", "needs cvxpy (pip install absint[sdp])")
    out = _listing(capsys)
    sections = [line for line in out.splitlines() if not line.startswith(" ")]
    assert sections[:3] == ["domains:", "analyses (every domain is one too):", "solvers:"]
    assert "box          intervals per neuron" in out and "[built-in]" in out
    assert "bab          complete branch and bound" in out
    assert "t_fancy      unavailable: needs cvxpy (pip install absint[sdp])" in out
    for name in ("highs", "gurobi", "scipy"):
        assert f"  {name:<12} " in out
    assert main(["list", "-v"]) == 0
    assert "absint.domains.box:BoxDomain" in capsys.readouterr().out


# -- end to end: a real dist-info on the path, as `pip install` leaves it -----------------------
def _fake_site(tmp_path: Path, entry_points: str) -> Path:
    site = tmp_path / "site"
    info = site / "fakeplug-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "fake_plugin_mod.py").write_text(PLUGIN_MODULE)
    (site / "fake_plugin_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


def _run(code: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="always")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_installed_plugin_end_to_end(tmp_path) -> None:
    site = _fake_site(tmp_path, """\
        [absint.domains]
        fakedom = fake_plugin_mod:FakeDomain
        brokenplug = fake_plugin_broken:Broken
        box = fake_plugin_mod:Shadow

        [absint.solvers]
        fakesolver = fake_plugin_mod:FakeSolver
        """)
    proc = _run("""\
        import sys, absint
        from absint.cli import main
        main(["list"])
        print("IMPORTED", "fake_plugin_mod" in sys.modules)
        main(["list", "--check"])
        print("ORIGIN", absint.registry.domain_origin("fakedom"))
        """, site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out, err = proc.stdout, proc.stderr
    assert "IMPORTED False" in out  # plain `absint list` imports no plugin
    assert "fakedom      a test plugin domain  [fakeplug 1.0]" in out
    assert "ORIGIN fakeplug 1.0" in out
    assert "PluginWarning" in err and "brokenplug" in err and "boom at import" in err
    assert "'box'" in err and "already taken" in err
    assert "box          intervals per neuron" in out  # the built-in, not the shadow
    assert "brokenplug   unavailable:" in out
    assert "fakesolver   unavailable: licence file missing" in out


def test_installed_plugin_solver_used_by_an_analysis(tmp_path) -> None:
    """A solver installed as a plugin is found by name by the LP analysis and actually solves."""
    site = _fake_site(tmp_path, """\
        [absint.solvers]
        countingsolver = fake_plugin_mod:CountingSolver
        """)
    proc = _run("""\
        import sys, numpy as np, torch, absint
        from absint.specs import InputBox, robustness_property
        from absint.testing import random_mlp
        g = random_mlp(3, (3, 8, 8, 3))  # DeepPoly cannot decide this region: the LP has to solve
        label = int(g.forward(torch.zeros(1, 3, dtype=torch.float64)).argmax())
        spec = (InputBox(np.full(3, -0.1), np.full(3, 0.1)), robustness_property(label, 3))
        mine = absint.verify(g, spec, analysis="lp", attack=False, backend="countingsolver")
        print("SOLVES", len(sys.modules["fake_plugin_mod"].SOLVES))
        highs = absint.verify(g, spec, analysis="lp", attack=False, backend="highs")
        dp = absint.verify(g, spec, analysis="deeppoly", attack=False)
        print("MARGINS", mine.margin, highs.margin, dp.margin)
        """, site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert int(words[words.index("SOLVES") + 1]) > 0
    mine, highs, dp = (float(w) for w in words[words.index("MARGINS") + 1:][:3])
    assert mine == pytest.approx(highs, abs=1e-9) and mine > dp  # the LP ran, on the plugin solver


def test_example_plugin_from_source_registers_and_verifies(reg) -> None:
    """examples/absint-symint imported from its source path (works whether or not it is installed)."""
    sys.path.insert(0, str(ROOT / "examples" / "absint-symint"))
    try:
        from absint_symint import SymIntDomain
    finally:
        sys.path.remove(str(ROOT / "examples" / "absint-symint"))
    if registry.available_domains().get("symint") is not SymIntDomain:
        unregister_domain("symint")
        register_domain(SymIntDomain)
    region = InputBox(np.array([-0.3, 0.1]), np.array([0.3, 0.2]))
    prop = robustness_property(0, 3)
    sym = absint.verify(_tiny_net(), (region, prop), analysis="symint", attack=False)
    box = absint.verify(_tiny_net(), (region, prop), analysis="box", attack=False)
    assert sym.verified and sym.margin >= box.margin


class _FlatBounds(BoxDomain):
    """A buggy plugin: ``bounds`` drops the batch axis (check_domain flags it)."""

    name = "t_flat_bounds"

    def bounds(self, x):
        lo, hi = super().bounds(x)
        return lo.reshape(-1), hi.reshape(-1)


def test_a_plugin_domain_that_returns_wrong_shapes_is_a_domain_error(reg) -> None:
    """It once surfaced as a RuntimeError/AttributeError from absint's internals."""
    from absint.errors import DomainError

    register_domain(_FlatBounds)
    try:
        region = InputBox(np.array([0.1, 0.1]), np.array([0.2, 0.2]))
        with pytest.raises(DomainError, match="t_flat_bounds"):
            absint.verify(_tiny_net(), (region, robustness_property(0, 3)), analysis="t_flat_bounds", attack=False)
    finally:
        unregister_domain("t_flat_bounds")


class _Float32Box(BoxDomain):
    """A plugin that computes in float32: the float64 network would be rounded to reach it."""

    name = "t_float32_box"

    def __init__(self, options=None, *, device=None, dtype=torch.float32) -> None:
        super().__init__(options, device=device, dtype=dtype)


class _InvertedRelu(BoxDomain):
    """A buggy plugin whose ReLU swaps its bounds: the output box claims an empty set."""

    name = "t_inverted_relu"

    def relu(self, x):
        lo, hi = self.bounds(super().relu(x))
        return self.from_box(hi + 1.0, lo)


class _NanAffine(BoxDomain):
    name = "t_nan_affine"

    def affine(self, x, op, bias):
        lo, hi = self.bounds(super().affine(x, op, bias))
        return self.from_box(lo * float("nan"), hi)


@pytest.mark.parametrize("cls,message", [(_Float32Box, "float64"), (_InvertedRelu, "lower > upper"),
                                         (_NanAffine, "NaN")])
def test_a_plugin_domain_with_unusable_bounds_is_a_domain_error_not_a_verdict(reg, cls, message) -> None:
    """A float32 domain (its bounds hold for the rounded network), an inverted box (an empty set
    "proves" every property) and NaN bounds were passed on to the decision unchecked. The property
    holds here (the sampling check finds no counterexample), so only the bounds decide."""
    from absint.errors import DomainError

    register_domain(cls)
    try:
        region = InputBox(np.array([0.1, 0.1]), np.array([0.2, 0.2]))
        prop = robustness_property(0, 3)  # Box proves it (test_register_domain_makes_an_analysis_usable_in_verify)
        with pytest.raises(DomainError, match=message):
            absint.verify(_tiny_net(), (region, prop), analysis=cls.name, attack=False)
    finally:
        unregister_domain(cls.name)
