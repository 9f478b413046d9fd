"""Benchmark configurations: TOML files (read with :mod:`tomllib`) or command-line flags.

A configuration is a list of *experiments*, each run with every analysis listed::

    name = "eran-mnist"
    results = "eran_mnist.jsonl"       # default <name>.jsonl in the user results folder (below)
    reference = "benchmarks/results/eran_mnist.jsonl"   # results committed with the config (read only)
    bench_root = "../shared/bench"     # prefix that `absint bench --bench-root DIR` replaces
    analyses = ["box", "deepzono", "deeppoly"]
    skip_unavailable = true            # drop (with a warning) analyses this install lacks
    timeout = 120                      # seconds per instance
    attack_budget = 1.0                # VNN-COMP lists: extra PGD seconds after an inconclusive analysis
    workers = 1                        # parallel workers (also --workers)

    [[experiment]]                     # robustness of the first `count` images of a data set
    name = "mnist_6x100"
    network = "../shared/bench/eran/mnist_relu_6_100.onnx"
    data = "../shared/bench/eran/mnist_test_1000.npz"
    eps = 0.026                        # or a list: one run per value
    count = 100

    [[experiment]]                     # VNN-COMP instance list: onnx,vnnlib,timeout per line
    name = "mnistfc"
    instances = "../shared/bench/mnistfc/instances.csv"

    [analysis.refinepoly]              # options of one analysis column (optional)
    timeout = 30                       # its own limit (wins over the top-level one, not over an experiment's own)
    give_up_below = -11                # any other key is passed to the analysis
    [analysis.refinepoly_nobab]        # a second column of the same analysis, other options
    base = "refinepoly"
    final_bab = false
    timeout = 30

The ``analyses`` lists name columns: a registered analysis (``absint list``) or a name given an
``[analysis.NAME]`` table whose ``base`` is one. Rows carry the column name, so two option sets of
one analysis never share rows. ``report = "benchmarks/figures/NAME"`` makes ``absint bench`` write
the comparison table and the figures there when the run ends (like ``absint report``).

Rows go to the *user results folder* (``$XDG_DATA_HOME/absint/results``, by default
``~/.local/share/absint/results``), never into a checkout unless asked: a relative ``results``
or ``report`` path is relative to that folder, ``--out`` / ``--report`` override both.
``reference`` names results committed with the configuration (``absint bench`` reads it only to
say they exist). Other relative paths are relative to the project root: the parent of the
``configs/`` folder the file sits in (for a file elsewhere, the current directory; ``root = ...``
or ``--root`` overrides).
Paths that start with ``bench_root`` are rebased onto ``--bench-root`` when that flag is given,
so the shipped configs run against a copy of the benchmark data anywhere.
"""
from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from absint.errors import AbsintError

log = logging.getLogger(__name__)

DEFAULT_BENCH_ROOT = "../shared/bench"

_TOP_KEYS = {"name", "description", "results", "reference", "bench_root", "root", "analyses", "skip_unavailable", "timeout",
             "attack", "attack_budget", "batch_size", "workers", "threads_per_worker", "backend", "address", "experiment",
             "analysis", "report"}
_IMAGE_KEYS = {"name", "network", "data", "eps", "count", "start", "clip"}
_VNN_KEYS = {"name", "instances", "limit", "match"}
_COMMON_KEYS = {"analyses", "timeout", "attack", "attack_budget", "batch_size", "description"}


class BenchConfigError(AbsintError):
    """A benchmark configuration is malformed or names something that does not exist."""


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis column: the registered analysis ``base`` run with ``options`` and its own time limit."""

    name: str
    base: str
    options: tuple[tuple[str, Any], ...] = ()
    timeout: float | None = None  # None: the experiment's limit

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Experiment:
    """One experiment: an image set (``network``, ``data``, ``eps``) or a VNN-COMP ``instances`` list."""

    name: str
    analyses: tuple[str, ...]
    timeout: float | None = None
    attack: bool = True
    attack_budget: float | None = None  # VNN-COMP: extra PGD seconds after an inconclusive analysis
    batch_size: int = 1
    # image experiments
    network: Path | None = None
    data: Path | None = None
    eps: tuple[float, ...] = ()
    count: int | None = 100
    start: int = 0
    clip: tuple[float, float] | None = (0.0, 1.0)
    own_timeout: float | None = None  # set in the experiment's own table: wins over [analysis.*] limits
    # VNN-COMP experiments
    instances: Path | None = None
    limit: int | None = None
    match: str | None = None

    @property
    def kind(self) -> str:
        return "vnncomp" if self.instances is not None else "images"


@dataclass(frozen=True)
class BenchConfig:
    """A parsed configuration; ``results`` is where rows go, ``experiments`` what to run."""

    name: str
    results: Path
    experiments: tuple[Experiment, ...]
    workers: int = 1
    threads_per_worker: int = 1
    backend: str = "local"
    address: str | None = None
    skip_unavailable: bool = False
    source: Path | None = None
    description: str = ""
    analysis_specs: tuple[AnalysisSpec, ...] = ()
    report: Path | None = None  # folder for the table and figures written when the run ends
    reference: Path | None = None  # results committed with the configuration (read only)

    def spec(self, name: str) -> AnalysisSpec:
        """How column ``name`` runs (a bare registered analysis unless an ``[analysis.NAME]`` table says otherwise)."""
        for s in self.analysis_specs:
            if s.name == name:
                return s
        return AnalysisSpec(name, name)

    def with_overrides(self, **kw: Any) -> "BenchConfig":
        """A copy with the given (non-None) fields replaced."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class PathResolver:
    """Resolves config paths against ``root``, rebasing the ``bench_root`` prefix onto ``bench_override``."""

    root: Path
    bench_root: str = DEFAULT_BENCH_ROOT
    bench_override: Path | None = None
    _parts: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self._parts = Path(self.bench_root).parts

    def __call__(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        if self.bench_override is not None and p.parts[: len(self._parts)] == self._parts:
            p = Path(self.bench_override).expanduser().joinpath(*p.parts[len(self._parts):])
        if not p.is_absolute():
            p = self.root / p
        return Path(_normpath(p))


def _normpath(p: Path) -> str:
    import os

    return os.path.normpath(str(p))


def results_dir() -> Path:
    """The user results folder: ``$XDG_DATA_HOME/absint/results`` (default ``~/.local/share/absint/results``)."""
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "absint" / "results"


def _in_results_dir(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise BenchConfigError(f"{where}: expected a path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else results_dir() / p


def default_root(config_path: Path | None) -> Path:
    """The project root for a config file: the parent of its ``configs/`` folder, else the cwd."""
    if config_path is not None:
        parent = config_path.resolve().parent
        if parent.name == "configs":
            return parent.parent
    return Path.cwd()


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise BenchConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _as_tuple_str(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise BenchConfigError(f"{where}: {dup} listed twice (each name is one column)")
        return tuple(v)
    raise BenchConfigError(f"{where}: expected a string or a list of strings, got {v!r}")


def _as_bool(v: Any, where: str) -> bool:
    """A TOML boolean (``true``/``false``); a string such as ``"false"`` is an error, not true."""
    if not isinstance(v, bool):
        raise BenchConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _file_name(v: Any, where: str) -> str:
    """A configuration name used as a file name: no folders in it."""
    name = str(v)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise BenchConfigError(f"{where}: name {name!r} must be a plain name (it names the results file), "
                               "without folders; give `results = ...` to choose a path")
    return name


def _as_eps(v: Any, where: str) -> tuple[float, ...]:
    vals = v if isinstance(v, list) else [v]
    out = []
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise BenchConfigError(f"{where}: eps must be a non-negative number or a list of them, got {v!r}")
        out.append(float(x))
    if not out:
        raise BenchConfigError(f"{where}: eps list is empty")
    return tuple(out)


def _positive(v: Any, where: str, *, integer: bool = False, allow_none: bool = True) -> Any:
    if v is None and allow_none:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
    if isinstance(v, bool) or not ok or v <= 0:
        raise BenchConfigError(f"{where}: expected a positive finite {'integer' if integer else 'number'}, "
                               f"got {v!r}")
    return v


def _nonneg(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise BenchConfigError(f"{where}: expected a non-negative number, got {v!r}")
    return float(v)


def _analysis_specs(tables: Any, where: str) -> tuple[AnalysisSpec, ...]:
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise BenchConfigError(f"{where}: [analysis.NAME] entries must be tables")
    specs = []
    for name, t in tables.items():
        aw = f"{where}: [analysis.{name}]"
        opts = {k: v for k, v in t.items() if k not in ("base", "timeout")}
        base = t.get("base", name)
        if not isinstance(base, str) or not base:
            raise BenchConfigError(f"{aw}: base must be an analysis name, got {base!r}")
        specs.append(AnalysisSpec(name=str(name), base=base, options=tuple(sorted(opts.items())),
                                  timeout=_positive(t.get("timeout"), f"{aw}: timeout")))
    return tuple(specs)


def parse_config(data: dict[str, Any], *, source: Path | None = None, root: Path | None = None,
                 bench_root: Path | None = None, results: Path | None = None) -> BenchConfig:
    """Build a :class:`BenchConfig` from a parsed TOML table (see the module docstring)."""
    where = str(source) if source else "config"
    _check_keys(data, _TOP_KEYS, where)
    for key in ("root", "bench_root"):
        if key in data and not isinstance(data[key], str):
            raise BenchConfigError(f"{where}: {key} must be a folder path (a string), got {data[key]!r}")
    root = Path(root) if root is not None else (
        Path(data["root"]) if "root" in data else default_root(source))
    if not root.is_absolute():
        root = (default_root(source) / root) if source is not None else root.resolve()
    resolve = PathResolver(root, str(data.get("bench_root", DEFAULT_BENCH_ROOT)), bench_root)
    name = _file_name(data.get("name") or (source.stem if source else "bench"), f"{where}: name")
    analyses = _as_tuple_str(data.get("analyses", ["box"]), f"{where}: analyses")
    timeout = _positive(data.get("timeout"), f"{where}: timeout")
    attack = _as_bool(data.get("attack", True), f"{where}: attack")
    attack_budget = data.get("attack_budget")
    batch = _positive(data.get("batch_size", 1), f"{where}: batch_size", integer=True)
    tables = data.get("experiment", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not tables:
        raise BenchConfigError(f"{where}: no [[experiment]] tables")
    experiments: list[Experiment] = []
    names: set[str] = set()
    for i, t in enumerate(tables):
        ew = f"{where}: experiment #{i + 1}"
        if "name" not in t:
            raise BenchConfigError(f"{ew}: needs a name")
        ew = f"{where}: experiment {t['name']!r}"
        if t["name"] in names:
            raise BenchConfigError(f"{ew}: duplicate experiment name")
        names.add(t["name"])
        common = dict(name=str(t["name"]),
                      analyses=_as_tuple_str(t.get("analyses", list(analyses)), f"{ew}: analyses"),
                      timeout=_positive(t.get("timeout", timeout), f"{ew}: timeout"),
                      own_timeout=_positive(t.get("timeout"), f"{ew}: timeout"),
                      attack=_as_bool(t.get("attack", attack), f"{ew}: attack"),
                      attack_budget=_nonneg(t.get("attack_budget", attack_budget), f"{ew}: attack_budget"),
                      batch_size=_positive(t.get("batch_size", batch), f"{ew}: batch_size", integer=True))
        if "instances" in t:
            _check_keys(t, _VNN_KEYS | _COMMON_KEYS, ew)
            experiments.append(Experiment(**common, instances=resolve(t["instances"]),
                                          limit=_positive(t.get("limit"), f"{ew}: limit", integer=True),
                                          match=t.get("match")))
        elif "network" in t:
            _check_keys(t, _IMAGE_KEYS | _COMMON_KEYS, ew)
            if "data" not in t or "eps" not in t:
                raise BenchConfigError(f"{ew}: an image experiment needs network, data and eps")
            clip = t.get("clip", [0.0, 1.0])
            if clip is not False and not (isinstance(clip, list) and len(clip) == 2
                                          and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                  and math.isfinite(c) for c in clip) and clip[0] <= clip[1]):
                raise BenchConfigError(f"{ew}: clip must be [lo, hi] with finite lo ≤ hi, or false; got {clip!r}")
            start = t.get("start", 0)
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise BenchConfigError(f"{ew}: start must be a non-negative integer")
            experiments.append(Experiment(**common, network=resolve(t["network"]), data=resolve(t["data"]),
                                          eps=_as_eps(t["eps"], f"{ew}: eps"),
                                          count=_positive(t.get("count", 100), f"{ew}: count", integer=True),
                                          start=start,
                                          clip=None if clip is False else (float(clip[0]), float(clip[1]))))
        else:
            raise BenchConfigError(f"{ew}: give either `instances` (VNN-COMP list) or `network` + `data` + `eps`")
    res = Path(results) if results is not None else _in_results_dir(data.get("results", f"{name}.jsonl"),
                                                                      f"{where}: results")
    if res.is_dir():
        raise BenchConfigError(f"{where}: results {str(res)!r} is a folder; give a file path (rows are JSON lines)")
    backend = str(data.get("backend", "local"))
    if backend not in ("local", "ray"):
        raise BenchConfigError(f"{where}: backend must be 'local' or 'ray', got {backend!r}")
    return BenchConfig(
        analysis_specs=_analysis_specs(data.get("analysis", {}), where),
        report=_in_results_dir(data["report"], f"{where}: report") if data.get("report") else None,
        reference=resolve(data["reference"]) if data.get("reference") else None,
        name=name, results=Path(res), experiments=tuple(experiments),
        workers=_positive(data.get("workers", 1), f"{where}: workers", integer=True),
        threads_per_worker=_positive(data.get("threads_per_worker", 1), f"{where}: threads_per_worker", integer=True),
        backend=backend, address=data.get("address"), skip_unavailable=_as_bool(data.get("skip_unavailable", False), f"{where}: skip_unavailable"),
        source=source, description=str(data.get("description", "")))


def load_config(path: str | Path, *, root: Path | None = None, bench_root: Path | None = None,
                results: Path | None = None) -> BenchConfig:
    """Read and parse a TOML configuration file."""
    path = Path(path)
    if not path.exists():
        raise BenchConfigError(f"{path}: no such config file")
    if path.is_dir():
        raise BenchConfigError(f"{path}: is a folder, not a config file")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_config(data, source=path, root=root, bench_root=bench_root, results=results)


def check_analyses(config: BenchConfig, available: set[str] | None = None) -> BenchConfig:
    """Check every analysis exists; with ``skip_unavailable`` drop missing ones with a warning."""
    if available is None:
        from absint.analyses import available_analyses

        available = set(available_analyses())
    _check_options(config, available)
    exps = []
    for e in config.experiments:
        missing = [a for a in e.analyses if config.spec(a).base not in available]
        if missing and not config.skip_unavailable:
            named = [a if config.spec(a).base == a else f"{a} (base = {config.spec(a).base!r})" for a in missing]
            raise BenchConfigError(f"experiment {e.name!r}: analysis {named} not available here "
                                   f"(available: {sorted(available)}); set skip_unavailable = true to skip")
        if missing:
            log.warning("experiment %r: skipping unavailable analyses %s", e.name, missing)
        kept = tuple(a for a in e.analyses if config.spec(a).base in available)
        if not kept:
            log.warning("experiment %r: no available analysis, skipped", e.name)
            continue
        exps.append(replace(e, analyses=kept))
    return replace(config, experiments=tuple(exps))


def _check_options(config: BenchConfig, available: set[str]) -> None:
    """Instantiate every configured analysis once, so a misspelt option fails before the run starts."""
    used = {a for e in config.experiments for a in e.analyses}
    for spec in config.analysis_specs:
        if spec.name not in used or spec.base not in available:
            continue
        try:
            from absint.analyses import get_analysis

            get_analysis(spec.base, **spec.kwargs)
        except Exception as exc:  # noqa: BLE001 - any constructor error is a config error here
            raise BenchConfigError(f"[analysis.{spec.name}]: {spec.base} does not accept these options: "
                                   f"{type(exc).__name__}: {exc}") from exc
