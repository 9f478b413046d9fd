"""Where a result came from: absint's version and, when it runs from a git checkout, the commit.

The commit is read from the files under ``.git`` (``HEAD``, loose refs, ``packed-refs``; linked
worktrees included), once per process: no ``git`` subprocess per result row. Whether the
checkout has uncommitted changes needs ``git status``; :func:`provenance` asks it once per
process, with a short time limit, and records ``None`` when git is not there.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def absint_version() -> str:
    """The installed distribution's version (``absint.__version__`` in a bare source tree)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("absint")
    except PackageNotFoundError:  # pragma: no cover - a bare source tree, never installed
        return "unknown (not installed)"


def _git_dir(root: Path) -> Path | None:
    dot = root / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():  # a linked worktree or submodule: "gitdir: <path>"
        text = dot.read_text().strip()
        if text.startswith("gitdir:"):
            p = Path(text.split(":", 1)[1].strip())
            return p if p.is_absolute() else (root / p).resolve()
    return None


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    common = git_dir
    if (git_dir / "commondir").is_file():  # linked worktrees keep their refs in the common dir
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text().strip()
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line and not line.startswith(("#", "^")):
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha
    return None


def git_commit(root: Path = CHECKOUT) -> str | None:
    """The checked-out commit of the checkout at ``root`` (``None`` outside a git checkout)."""
    try:
        git_dir = _git_dir(root)
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            return _resolve_ref(git_dir, head.split(":", 1)[1].strip())
        return head or None
    except OSError:
        return None


def _dirty(root: Path) -> bool | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, object]:
    """``{"version", "commit", "dirty"}`` of this process's absint (computed once)."""
    commit = git_commit()
    return {"version": absint_version(), "commit": commit, "dirty": _dirty(CHECKOUT) if commit else None}


def is_committed(path: Path) -> bool:
    """True if ``path`` is a file tracked by the git checkout it sits in (one ``git`` call)."""
    path = Path(path).resolve()
    if not path.is_file():
        return False
    try:
        out = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0
