"""A bounded store of open sub-problems, kept as stacked tensors (one row per sub-problem).

Each sub-problem is a dict of tensors with a leading axis (``lo``, ``hi``, ``splits``,
``row_lb``, ``depth``, ...); the queue stores them concatenated, so popping a batch of ``k``
is one index operation. Selection is best-first (smallest proved clause margin first, the order
that finds counterexamples early, as in Bunel et al. JMLR 2020) while the queue is less than
half full, and depth-first (deepest first) after that: depth-first closes leaves and keeps the
number of open sub-problems bounded (the memory bound of :class:`~absint.bab.BabOptions`).
"""
from __future__ import annotations

import torch

Batch = dict[str, torch.Tensor]


def batch_len(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0]) if batch else 0


def batch_select(batch: Batch, index: torch.Tensor) -> Batch:
    return {k: v[index] for k, v in batch.items()}


def batch_cat(parts: list[Batch]) -> Batch:
    parts = [p for p in parts if p and batch_len(p) > 0]
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class SubproblemQueue:
    """Open sub-problems with a hard size limit ``max_size``; ``priority`` is lower = sooner."""

    def __init__(self, max_size: int) -> None:
        self.max_size = int(max_size)
        self.items: Batch = {}
        self.peak = 0

    def __len__(self) -> int:
        return batch_len(self.items)

    @property
    def room(self) -> int:
        return self.max_size - len(self)

    @property
    def depth_first(self) -> bool:
        return len(self) > self.max_size // 2

    def push(self, batch: Batch) -> None:
        n = batch_len(batch)
        if n == 0:
            return
        if len(self) + n > self.max_size:
            raise OverflowError(f"queue would hold {len(self) + n} > {self.max_size} sub-problems")
        self.items = batch_cat([self.items, batch]) if self.items else dict(batch)
        self.peak = max(self.peak, len(self))

    def pop(self, k: int) -> Batch:
        """Remove and return up to ``k`` sub-problems (best-first, or deepest-first when half full)."""
        n = len(self)
        k = min(k, n)
        if k <= 0:
            return {}
        if self.depth_first:
            key = -self.items["depth"].to(torch.float64)
        else:
            key = self.items["priority"]
        if k == n:
            take = torch.arange(n)
        else:
            take = torch.topk(key, k, largest=False).indices
        keep = torch.ones(n, dtype=torch.bool)
        keep[take] = False
        out = batch_select(self.items, take)
        self.items = batch_select(self.items, keep.nonzero().squeeze(1))
        return out

    def take_all(self) -> Batch:
        out, self.items = self.items, {}
        return out
