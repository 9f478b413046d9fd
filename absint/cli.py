"""Command-line interface: ``absint verify``, ``absint list`` (and more subcommands as they land).

``absint verify`` with no arguments analyses the bundled digits network on its test split, so a
fresh checkout (or a fresh ``pip install``) has something to run without any download.

Start-up is kept cheap: this module imports neither torch nor numpy, subcommands import what they
need when they run, and ``absint list`` reads the registry's entry points without importing any
plugin (``absint list --check`` imports each one and asks the solvers for their licences).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from absint import argtypes
from absint.data import bundled

BUNDLED = bundled()
DEFAULT_NETWORK = BUNDLED / "digits_mlp_2x64.onnx"
DEFAULT_DATA = BUNDLED / "digits_test.npz"

log = logging.getLogger("absint")

#: Subcommands that never run torch (start-up stays cheap: torch is not imported for them).
LIGHT_COMMANDS = {"list", "score", "report"}

#: Extra subcommands: name -> (help, add_arguments(parser), run(args) -> exit code).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--analysis", "-a", default="deeppoly", help="analysis name (see `absint list`)")
    p.add_argument("--timeout", type=argtypes.seconds, default=None,
                   help="time limit per instance in seconds (> 0; loading and parsing included)")
    p.add_argument("--device", type=argtypes.device, default=None,
                   help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--threads", type=argtypes.positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-attack", action="store_true", help="skip the PGD attack")
    p.add_argument("--json", type=argtypes.output_file, default=None, help="write results as JSON here")
    p.add_argument("--csv", type=argtypes.output_file, default=None, help="write results as CSV here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or table")
    p.add_argument("--verbose", "-v", action="count", default=0)


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", nargs="?", type=Path, default=DEFAULT_NETWORK,
                   help=f"ONNX network (default: bundled {DEFAULT_NETWORK.name})")
    p.add_argument("--vnnlib", nargs="+", type=argtypes.existing_file, default=None,
                   help="VNN-LIB specification file(s)")
    p.add_argument("--data", type=argtypes.existing_file, default=None,
                   help="image set (.npz with images/labels or ERAN .csv); default: bundled digits test split "
                        "when the network is the bundled one")
    p.add_argument("--eps", type=argtypes.radius, default=0.05, help="L-inf radius for --data (default 0.05)")
    p.add_argument("--count", "-n", type=argtypes.positive_int, default=100,
                   help="number of images (default 100, or fewer if the data set ends first)")
    p.add_argument("--start", type=argtypes.nonneg_int, default=0, help="index of the first image")
    p.add_argument("--clip", type=argtypes.finite, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="valid input range for the ball (default 0 1)")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=32, help="images per batched analysis pass")
    _add_common(p)


def _run_verify(args: argparse.Namespace) -> int:
    import absint
    from absint.results import format_table, results_to_csv, results_to_json

    argtypes.check_range(*args.clip, "--clip", "absint verify")
    if args.vnnlib and args.data is not None:
        raise argtypes.UsageError("absint verify: error: give --vnnlib or --data, not both")
    net = absint.load_network(args.network, device=args.device)
    results = []
    t0 = time.perf_counter()
    if args.vnnlib:
        bar = None if args.quiet else _bar(len(args.vnnlib), args.analysis)
        for spec in args.vnnlib:
            r = absint.verify(net, spec, analysis=args.analysis, timeout=args.timeout, attack=not args.no_attack,
                              device=args.device, threads=None)  # main() set --threads
            results.append(r)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{spec.name}: {r.verdict}")
        if bar is not None:
            bar.close()
    else:
        data = args.data
        if data is None:
            if Path(args.network).resolve() == DEFAULT_NETWORK.resolve() or Path(args.network).parent.resolve() == BUNDLED:
                data = DEFAULT_DATA
            else:
                raise absint.SpecError("give --vnnlib SPEC or --data IMAGES for this network")
        images, labels = absint.load_images(data, tuple(net.input_shape))
        if args.start >= len(images):
            raise argtypes.UsageError(f"absint verify: error: argument --start: {args.start} is past the end of {data} "
                                      f"({len(images)} images, indices 0 to {len(images) - 1})")
        sl = slice(args.start, args.start + args.count)
        names = [f"{Path(data).stem}[{i}]" for i in range(len(images))][sl]
        results = absint.verify_robustness(
            net, images[sl], labels[sl], args.eps, analysis=args.analysis, clip=tuple(args.clip),
            timeout=args.timeout, attack=not args.no_attack, batch_size=args.batch_size, device=args.device,
            names=names, progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        print(f"network {Path(args.network).name} ({net.summary()[:100]}...)" if len(net.summary()) > 100
              else f"network {Path(args.network).name} ({net.summary()})")
        if not args.vnnlib:
            print(f"L-inf eps={args.eps}, analysis={args.analysis}; 'verified' = correctly classified and proven robust")
        else:
            print(f"analysis={args.analysis}")
        for r in results if args.vnnlib else []:
            print(f"  {r.name}: {r.verdict} ({r.seconds:.3f} s){' — ' + r.reason if r.reason else ''}")
        print(format_table(results))
        print(f"wall time {elapsed:.2f} s")
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("_run", "json", "csv", "quiet", "verbose")}
        settings["vnnlib"] = [str(p) for p in args.vnnlib] if args.vnnlib else None
        args.json.write_text(results_to_json(results, settings=settings))
    if args.csv:
        args.csv.write_text(results_to_csv(results))
    return 0


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true",
                   help="import every domain, analysis and solver and check it (licences, dependencies)")
    p.add_argument("--verbose", "-v", action="count", default=0)


def _run_list(args: argparse.Namespace) -> int:
    """Print the domains, analyses and solver backends registered here, and why any is not usable."""
    from absint import registry

    check = getattr(args, "check", False)
    verbose = getattr(args, "verbose", 0)
    if check:
        for group in registry.GROUPS:
            registry.available(group)

    def line(entry: registry.Entry, where: bool) -> str:
        if entry.status in ("failed", "unavailable"):
            text = f"unavailable: {entry.reason}"
        else:
            text = registry.describe(entry)
        origin = f"{entry.origin}: {entry.target}" if verbose else entry.origin
        return f"  {entry.name:<12} {text}".rstrip() + (f"  [{origin}]" if where else "")

    domains = registry.entries(registry.DOMAINS)
    analyses = registry.entries(registry.ANALYSES)
    print("domains:")
    for entry in sorted((e for e in domains if e.status != "ignored"), key=lambda e: e.name):
        print(line(entry, True))
    print("analyses (every domain is one too):")
    for entry in sorted((e for e in analyses if e.status != "ignored"), key=lambda e: e.name):
        print(line(entry, verbose > 0))
    print("solvers:")
    if check:
        from absint.solvers import available_backends

        for name, (ok, why) in available_backends().items():
            print(f"  {name:<12} {'available' if ok else 'unavailable'}: {why}")
    else:
        for entry in registry.entries(registry.SOLVERS):
            if entry.status != "ignored":
                print(line(entry, True))
    skipped = [e for e in registry.entries() if e.status in ("failed", "ignored")]
    if skipped:
        print("plugins not loaded:")
        for entry in skipped:
            print(f"  {entry.name:<12} {entry.status}: {entry.reason}")
    if not check:
        print("(nothing was imported; `absint list --check` loads every plugin and checks solver licences)")
    return 0


def _bar(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="spec")


def build_parser() -> argparse.ArgumentParser:
    parser = argtypes.Parser(prog="absint", description="Certify neural-network robustness by abstract interpretation.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {"verify": ("verify a network on VNN-LIB specs or an image set", _add_verify, _run_verify),
                "list": ("list domains, analyses and solvers", _add_list, _run_list)}
    _load_extra_commands()
    commands.update(SUBCOMMANDS)
    for name, (help_, add, run) in commands.items():
        p = sub.add_parser(name, help=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def _load_extra_commands() -> None:
    """Import modules that add subcommands to :data:`SUBCOMMANDS` (bench, vnncomp, report, ...)."""
    import importlib

    for mod in ("absint.bench.cli",):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    """Run one ``absint`` command; returns the exit code (2: a usage or input mistake, one line on stderr)."""
    from absint.argtypes import UsageError
    from absint.errors import AbsintError

    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help / --version print and "exit": hand the code back
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
        logging.basicConfig(level=logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2),
                            format="%(levelname)s %(name)s: %(message)s")
        if args.command not in LIGHT_COMMANDS:  # commands that compute: one torch thread unless --threads
            import torch

            torch.set_num_threads(max(1, getattr(args, "threads", 1) or 1))
        code = args._run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return code
    except UsageError as exc:
        print(_one_line(exc), file=sys.stderr)
        return 2
    except AbsintError as exc:
        print(f"absint: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("absint: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``absint bench --dry-run | head``): stop quietly, as `cat` would.
        _silence_stdout()
        return 141
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback only with -v
        log.info("traceback of the internal error:", exc_info=True)
        print(f"absint: internal error (please report it; -v shows the traceback): {type(exc).__name__}: "
              f"{_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined with ' ')."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured by a test)
        pass


if __name__ == "__main__":  # pragma: no cover
    # ``python -m absint.cli``: run the imported module's ``main`` (subcommand modules register on
    # ``absint.cli``, not on this ``__main__`` copy of it)
    from absint.cli import main as _main

    sys.exit(_main())
