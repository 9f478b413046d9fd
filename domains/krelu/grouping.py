"""kPoly / ERAN grouping of the unstable neurons of one layer into k-ReLU groups.

kPoly (Singh, Ganvir, Püschel, Vechev, NeurIPS 2019, choice of the neuron groups) does not
relax all ``C(n, k)`` groups: it ranks the unstable neurons of a layer, cuts the ranking into
windows of ``sparse_n`` neurons, and inside each window takes a *sparse cover*: groups of
size ``k`` any two of which share at most a bounded number of neurons.  ERAN's reference
implementation (``tf_verify/krelu.py: sparse_heuristic_with_cutoff``) fixes the details,
which this module follows:

* a neuron is unstable when ``l < 0 < u``; its score is the area of its triangle relaxation
  up to a constant, ``−l·u``; neurons are sorted by decreasing score (ties by index);
* **cutoff** — our reading of ERAN's ``cutoff = 0.05``: ERAN compares the *absolute*
  score, keeping a neuron iff ``−l·u ≥ cutoff``.  That is the default here.  With
  ``KReluOptions(relative_cutoff=True)`` the test becomes ``−l·u ≥ cutoff · max(−l·u)``
  (relative to the widest neuron of the layer), which is scale-invariant;
* the kept neurons are cut, in ranked order, into consecutive windows of ``sparse_n``;
  a window with more than ``k`` neurons contributes its sparse cover, a window of
  ``2 ≤ size ≤ k`` neurons contributes itself as one (smaller) group, a lone neuron nothing
  (its triangle relaxation is the 1-ReLU case, applied by the domain anyway);
* **overlap** ``s`` — ERAN's convention: two groups may share at most ``k + s`` neurons
  (ERAN's default ``s = −2`` with ``k = 3`` gives overlap 1, i.e. no pair of neurons
  occurs in two groups).  Values with ``k + s ≥ k − 1`` allow every combination;
  ``k + s < 0`` is rejected;
* the sparse cover is greedy: the ``k``-combinations of window positions are scanned in
  lexicographic order (so higher-ranked neurons come first) and a combination is accepted
  when it shares at most ``k + s`` neurons with every accepted one.

Groups are returned as tuples of neuron indices (ascending within a group).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

__all__ = ["KReluOptions", "group_neurons", "sparse_cover", "unstable_ranking"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KReluOptions:
    """Options of the k-ReLU (kPoly) relaxation.

    ``k``: group size; ``s``: overlap parameter (max shared neurons = ``k + s``, ERAN's
    convention); ``sparse_n``: window size; ``cutoff``: minimum score ``−l·u`` (absolute,
    as in ERAN, unless ``relative_cutoff``); ``hull``: ``"fast"`` (sound over-approximation,
    :func:`absint.domains.krelu.hull_fast.krelu_hull_fast`), ``"exact"`` (cdd.gmp,
    :func:`absint.domains.krelu.hull_exact.krelu_hull_exact`) or ``"auto"`` (exact for ``k ≤ 2``,
    where it is as cheap as the fast one, fast beyond); ``max_groups``: keep at most this many
    groups per layer (the first ones, i.e. those of the widest neurons; ``None``: all).
    """

    k: int = 3
    s: int = -2
    sparse_n: int = 70
    cutoff: float = 0.05
    hull: Literal["fast", "exact", "auto"] = "auto"
    relative_cutoff: bool = False
    max_groups: int | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.k + self.s < 0:
            raise ValueError(f"overlap k + s must be >= 0, got k={self.k}, s={self.s}")
        if self.sparse_n < 1:
            raise ValueError(f"sparse_n must be >= 1, got {self.sparse_n}")
        if self.cutoff < 0:
            raise ValueError(f"cutoff must be >= 0, got {self.cutoff}")
        if self.hull not in ("fast", "exact", "auto"):
            raise ValueError(f"hull must be 'fast', 'exact' or 'auto', got {self.hull!r}")
        if self.max_groups is not None and self.max_groups < 0:
            raise ValueError(f"max_groups must be >= 0 or None, got {self.max_groups}")

    @property
    def max_overlap(self) -> int:
        """The largest number of neurons two groups may share: ``min(k + s, k − 1)``."""
        return min(self.k + self.s, self.k - 1)


@lru_cache(maxsize=64)
def _sparse_cover_cached(n: int, k: int, max_overlap: int) -> tuple[tuple[int, ...], ...]:
    if n < k:
        return ()
    if max_overlap >= k - 1:
        return tuple(itertools.combinations(range(n), k))
    t = max_overlap + 1  # two groups conflict iff they share a t-subset
    used: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    for comb in itertools.combinations(range(n), k):
        subs = list(itertools.combinations(comb, t))
        if any(sub in used for sub in subs):
            continue
        used.update(subs)
        out.append(comb)
    return tuple(out)


def sparse_cover(n: int, k: int, max_overlap: int) -> list[tuple[int, ...]]:
    """Greedy sparse cover of ``range(n)`` by ``k``-subsets pairwise sharing ``≤ max_overlap``.

    Combinations are scanned in lexicographic order; cached per ``(n, k, max_overlap)``.
    """
    if k < 1 or max_overlap < 0:
        raise ValueError("need k >= 1 and max_overlap >= 0")
    return list(_sparse_cover_cached(int(n), int(k), int(max_overlap)))


def unstable_ranking(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the unstable neurons (``l < 0 < u``) sorted by decreasing ``−l·u``, and the scores."""
    l = np.asarray(lower, dtype=np.float64).reshape(-1)
    u = np.asarray(upper, dtype=np.float64).reshape(-1)
    if l.shape != u.shape:
        raise ValueError("lower and upper must have the same shape")
    idx = np.flatnonzero((l < 0) & (u > 0))
    score = -l[idx] * u[idx]
    order = np.lexsort((idx, -score))  # decreasing score, ties by index
    return idx[order], score[order]


def group_neurons(
    lower: np.ndarray, upper: np.ndarray, options: KReluOptions | None = None, *,
    priority: np.ndarray | None = None,
) -> list[tuple[int, ...]]:
    """kPoly/ERAN groups of one layer's unstable neurons; see the module docstring.

    Args:
      lower, upper: pre-activation bounds of the layer's neurons (flattened).
      options: :class:`KReluOptions` (``k``, ``s``, ``sparse_n``, ``cutoff``,
        ``relative_cutoff`` are used).
      priority: optional per-neuron scores (flattened, larger first) that replace the ranking by
        ``−l·u`` (e.g. how much each neuron's relaxation costs the bound being proved); the
        cutoff still applies to ``−l·u``.

    Returns:
      A list of groups, each a tuple of neuron indices in ascending order.
    """
    opt = options or KReluOptions()
    idx, score = unstable_ranking(lower, upper)
    if idx.size == 0:
        return []
    thr = opt.cutoff * float(score.max()) if opt.relative_cutoff else opt.cutoff
    kept = idx[score >= thr]
    if priority is not None:
        p = np.asarray(priority, dtype=np.float64).reshape(-1)[kept]
        kept = kept[np.lexsort((kept, -p))]
    groups: list[tuple[int, ...]] = []
    for start in range(0, kept.size, opt.sparse_n):
        window = kept[start : start + opt.sparse_n]
        if window.size > opt.k:
            for comb in sparse_cover(window.size, opt.k, opt.max_overlap):
                groups.append(tuple(sorted(int(window[c]) for c in comb)))
        elif window.size >= 2 or (window.size == 1 and opt.k == 1):
            groups.append(tuple(sorted(int(t) for t in window)))
    logger.debug(
        "k-ReLU grouping: %d unstable, %d above cutoff, %d groups", idx.size, kept.size, len(groups)
    )
    return groups
