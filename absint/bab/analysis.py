"""The ``bab`` analysis: complete verification by branch and bound over any bounding domain.

Input splitting (Wang et al. 2018, ReluVal/Neurify) for low-dimensional inputs, ReLU splitting
(Bunel et al., JMLR 2020) otherwise; every sub-problem is bounded by a registered domain chosen
by name (DeepPoly by default), many sub-problems per domain call. ``complete = True``: with input
splitting, "unknown" means time-out, memory bound or depth limit.

Through the generic :class:`~absint.analyses.Analysis` interface the analysis sees only safety
rows, not which clause of the violation DNF each row belongs to; it then treats every row as its
own clause (exact for robustness properties and single-row clauses, sound but incomplete for a
clause with several rows). Pass ``owner`` (the clause of each row, as
:meth:`~absint.specs.OutputProperty.stacked` returns it) — :func:`absint.verify.verify` does for
every clause-aware analysis — to handle the DNF exactly; the proved per-clause margin bounds are in ``stats["clause_lower"]``.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from absint.analyses import Analysis, BoundResult
from absint.bab.bounding import Bounder
from absint.bab.engine import Search, SearchResult, merge_results
from absint.bab.input_split import InputSplitting
from absint.bab.options import BabOptions, resolve_relu_heuristic
from absint.bab.queue import Batch, batch_len, batch_select
from absint.bab.relu_split import ReluSplitting
from absint.bab.root import MultiNeuronRoot, multineuron_root
from absint.ir import Graph, Relu
from absint.registry import DOMAINS, get_domain, names
from absint.specs import InputBox

log = logging.getLogger(__name__)


def default_domain() -> str:
    """DeepPoly when registered, else Box."""
    return "deeppoly" if "deeppoly" in names(DOMAINS) else "box"


class BabAnalysis(Analysis):
    """Branch and bound (see the module docstring); options: :class:`BabOptions` or its fields."""

    name = "bab"
    description = "complete branch and bound: input or ReLU splitting over a bounding domain (Bunel et al. JMLR 2020)"
    complete = True
    batchable = False
    #: ``bound`` accepts ``owner=`` (each row's clause) and reports ``stats["clause_lower"]``: the
    #: proved per-clause margins, which decide a DNF exactly (see the module docstring).
    clause_aware = True

    options_class = BabOptions
    options: BabOptions

    def __init__(self, options: BabOptions | None = None, *, device=None, **keywords: Any) -> None:
        super().__init__(options, device=device, **keywords)
        self.last: SearchResult | None = None

    @property
    def bab_options(self) -> BabOptions:
        return self.options

    def domains(self) -> list:
        return [get_domain(self.options.domain or default_domain())(device=self.device)]

    def split_mode(self, graph: Graph) -> str:
        """``input`` or ``relu``: ``auto`` picks ReLU splitting for inputs of more than
        ``auto_input_dims`` variables, but only when the network has a ReLU to split (sigmoid/tanh
        networks get input splitting)."""
        o = self.bab_options
        if o.split != "auto":
            return o.split
        if not any(isinstance(n, Relu) for n in graph.nodes):
            return "input"
        return "input" if int(np.prod(graph.input_shape)) <= o.auto_input_dims else "relu"

    def make_search(self, graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray,
                    owner: np.ndarray, input_heuristic: str | None = None, *,
                    root_bounds: Any = None, constraints: Any = None) -> Search:
        """A ready :class:`~absint.bab.engine.Search` for one region (``input_heuristic``
        overrides the options' one; ``portfolio`` means ``smear`` for a single search;
        ``root_bounds``: bounds of some nodes proved elsewhere, name → ``(lower, upper)``, used by
        α/β ReLU splitting; ``constraints``: k-ReLU hull rows per ReLU node name with starting
        multipliers, :data:`absint.bab.beta.Constraints`, used by α/β ReLU splitting too)."""
        o = self.bab_options
        heuristic = input_heuristic or o.input_heuristic
        if heuristic == "portfolio":
            heuristic = "smear"
        name = o.domain or default_domain()
        dom_cls = get_domain(name)
        dom_opts = o.domain_options
        if dom_opts is None and name == "deeppoly":
            # Fully back-substituted intermediate bounds: ~2× the cost per sub-problem but tighter,
            # so fewer sub-problems (ACAS Xu 2_7 prop_1: verified in 16 s vs. 87 % after 20 s).
            from absint.domains.deeppoly import DeepPolyOptions

            dom_opts = DeepPolyOptions(early_stop=False)
        domain = dom_cls(dom_opts, device=self.device)
        bounder = Bounder(graph, domain)
        Ct, dt = torch.as_tensor(C, dtype=torch.float64), torch.as_tensor(d, dtype=torch.float64)
        K = int(owner.max()) + 1
        onehot = torch.zeros(len(owner), K, dtype=torch.bool)
        onehot[torch.arange(len(owner)), torch.as_tensor(owner)] = True
        mode = self.split_mode(graph)
        relu_heuristic = resolve_relu_heuristic(o.relu_heuristic, len(bounder.sizes))
        if mode == "input":
            strat = InputSplitting(bounder, region, Ct, dt, onehot, heuristic, o.attack, o.max_aspect)
        elif o.bounding == "alpha-beta" and bounder.n_relu > 0:
            from absint.bab.beta import BetaOptions, BetaReluSplitting

            strat = BetaReluSplitting(bounder, region, Ct, dt, onehot, relu_heuristic, o.attack,
                                      BetaOptions(iters=o.beta_iters, tighten_depth=o.tighten_depth,
                                                  opt_dtype=o.beta_dtype),
                                      root_bounds=root_bounds,
                                      constraints=constraints, fsb_candidates=o.fsb_candidates)
        else:
            strat = ReluSplitting(bounder, region, Ct, dt, onehot, relu_heuristic, o.attack)
        g = graph.to(self.device, torch.float64)
        return Search(strat, C, d, owner, region, g, batch_size=o.batch_size, max_queue=o.max_queue,
                      tolerance=o.tolerance, attack=o.attack, attack_every=o.attack_every,
                      max_depth=o.max_depth, seed=o.seed, max_nodes=o.max_nodes)

    def search(self, graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray, owner: np.ndarray | None = None,
               *, deadline: float | None = None) -> SearchResult:
        """Run the branch and bound on one region; ``owner[r]`` is the clause of row ``r``."""
        owner = np.arange(len(d)) if owner is None else np.asarray(owner)
        o = self.bab_options
        t0 = time.perf_counter()
        if self.split_mode(graph) == "relu" and not any(isinstance(n, Relu) for n in graph.nodes):
            # nothing to split: an honest "unknown" with the reason, never a crash
            K = int(owner.max()) + 1 if len(owner) else 0
            res = SearchResult("unsupported", None, np.full(len(d), -np.inf), np.full(K, -np.inf),
                               stats={"reason": "ReLU splitting asked (split='relu') but the network has no ReLU; "
                                                "use split='input' or 'auto'"})
            res.stats.update(mode="relu", domain=o.domain or default_domain(), seconds=time.perf_counter() - t0)
            self.last = res
            return res
        root, probe = None, None
        if self._wants_multineuron_root(graph):
            probe_search, probe = self._alpha_probe(graph, region, C, d, owner, deadline)
            if probe.status == "budget":  # the α root left the instance open
                root = self._root(graph, region, C, d, deadline, known=_probe_bounds(probe_search))
        if probe is not None and root is None:
            res = probe  # decided (or out of time) at the α root
        elif root is not None and bool((clause_max(root.rows, owner) > o.tolerance).all()):
            res = SearchResult("verified", row_min=root.rows, clause_min=clause_max(root.rows, owner), proved=1.0,
                               stats={"bounded": 0})
        elif o.workers <= 1 and o.input_heuristic == "portfolio" and self.split_mode(graph) == "input":
            res = self._portfolio(graph, region, C, d, owner, deadline)
        else:
            s = self.make_search(graph, region, C, d, owner, root_bounds=root and root.pre)
            if probe is not None and o.max_nodes is not None:  # the probe's sub-problems count too
                s.max_nodes = max(0, o.max_nodes - probe.stats.get("bounded", 0))
            res = s.run(deadline=deadline) if o.workers <= 1 else \
                _parallel(self, graph, region, C, d, owner, s, deadline, root and root.pre)
        if root is not None:  # both are proved lower bounds over the whole region
            if res.row_min is not None:
                res.row_min = np.maximum(res.row_min, root.rows)
            if res.clause_min is not None:
                res.clause_min = np.maximum(res.clause_min, clause_max(root.rows, owner))
            res.stats["root_multineuron"] = root.stats
            res.stats["bounded"] = res.stats.get("bounded", 0) + probe.stats.get("bounded", 0)  # the probe's too
        res.stats["mode"] = self.split_mode(graph)
        res.stats["domain"] = o.domain or default_domain()
        if o.bounding == "alpha-beta" and res.stats["mode"] == "relu":
            res.stats["domain"] = "alpha-beta"
        res.stats["seconds"] = time.perf_counter() - t0
        log.info("bab %s/%s: %s in %.2fs, %d sub-problems, %.4g%% proved, peak queue %d",
                 res.stats["mode"], res.stats["domain"], res.status, res.stats["seconds"],
                 res.stats.get("bounded", 0), 100 * res.proved, res.stats.get("peak_queue", 0))
        self.last = res
        return res

    def _wants_multineuron_root(self, graph: Graph) -> bool:
        o = self.bab_options
        return o.root == "multineuron" and o.bounding == "alpha-beta" and self.split_mode(graph) == "relu"

    def _alpha_probe(self, graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray, owner: np.ndarray,
                     deadline: float | None) -> tuple[Search, SearchResult]:
        """The search with optimised slopes alone (as ``root="alpha"``) for at most ``root_probe_nodes``
        sub-problems: most easy instances are decided there in about a second, where the multi-neuron
        root takes several. Returns the search and its result (status ``budget``: still open)."""
        o = self.bab_options
        search = self.make_search(graph, region, C, d, owner)
        search.max_nodes = o.root_probe_nodes if o.max_nodes is None else min(o.root_probe_nodes, o.max_nodes)
        return search, search.run(deadline=deadline)

    def _root(self, graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray, deadline: float | None,
              known: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> MultiNeuronRoot:
        """The multi-neuron root bounds (:mod:`absint.bab.root`) for ``root_share`` of the time left,
        starting from the bounds ``known``."""
        share_end = None
        if deadline is not None:
            now = time.perf_counter()
            share_end = now + self.bab_options.root_share * max(deadline - now, 0.0)
        return multineuron_root(graph, region, C, d, deadline=share_end, end=deadline, device=self.device,
                                known=known)

    def _portfolio(self, graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray, owner: np.ndarray,
                   deadline: float | None) -> SearchResult:
        """Input splitting with two bisection heuristics, *smear* and *lookahead*, searched in
        alternating time slices (0.5 s, doubling each round); each search keeps its own tree
        between slices, and the first to decide answers.

        Tree sizes of input splitting are heavy-tailed and the better heuristic differs per
        instance (ACAS Xu 2_8 prop_1: lookahead 2.7 s, smear > 116 s; 1_7 prop_2: smear 0.8 s,
        lookahead > 30 s), so interleaving costs at most about twice the better one's time.
        """
        searches = {h: self.make_search(graph, region, C, d, owner, h) for h in ("smear", "lookahead")}
        resume: dict[str, Batch | None] = {h: None for h in searches}  # None: start from the root
        last: dict[str, SearchResult] = {}
        slice_s = 0.5
        while searches:
            for h in list(searches):
                now = time.perf_counter()
                if deadline is not None and now >= deadline and last:
                    return _best_partial(last)
                end = now + slice_s if deadline is None else min(deadline, now + slice_s)
                res = searches[h].run(resume[h], deadline=end)
                res.stats["heuristic"] = h
                last[h] = res
                if res.status in ("verified", "falsified"):
                    return res
                if res.status == "timeout" and batch_len(res.open_items):
                    resume[h] = res.open_items
                else:  # out of memory or stuck: leave the instance to the other heuristic
                    del searches[h]
            slice_s *= 2
        return _best_partial(last)

    def bound(self, graph, lower, upper, C, d, *, deadline=None, owner=None) -> BoundResult:
        B = lower.shape[0]
        rows, cands, notes, stats = [], [], [], []
        for b in range(B):
            region = InputBox(lower[b].detach().cpu().numpy(), upper[b].detach().cpu().numpy())
            res = self.search(graph, region, C[b].detach().cpu().numpy(), d[b].detach().cpu().numpy(),
                              owner, deadline=deadline)
            rows.append(res.row_min)
            cands.append(res.counterexample)
            st = dict(res.stats, status=res.status, proved_fraction=res.proved,
                      clause_lower=res.clause_min.tolist())
            stats.append(st)
            if res.status == "unsupported":
                notes.append(f"bab: {res.stats['reason']}")
            elif res.status not in ("verified", "falsified"):
                notes.append(f"bab {res.status} after {st.get('bounded', 0)} sub-problems bounded: "
                             f"{100 * res.proved:.4g}% of the "
                             f"{'input volume' if st['mode'] == 'input' else 'split tree'} proved, "
                             f"{st.get('open', 0)} sub-problems open")
        # Every number is a proved lower bound over the whole region, also after a counterexample
        # (then the root's bounds, see Search._finish); the candidate is re-checked by the caller.
        return BoundResult(np.stack(rows), candidates=cands, notes=notes,
                           stats=stats[0] if B == 1 else {"per_region": stats})


def relu_branch_and_bound(graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray, *,
                          root_bounds: Any = None, constraints: Any = None, owner: np.ndarray | None = None,
                          options: BabOptions | None = None, device: Any = None,
                          deadline: float | None = None) -> SearchResult:
    """ReLU-split branch and bound with α/β bounding (β-CROWN) of the rows ``C y + d`` on ``region``,
    started from bounds proved elsewhere: ``root_bounds`` maps node names to ``(lower, upper)``
    (flat or shaped like the node), intersected with the engine's own root bounds. The public
    entry for refinement stages; ``options`` default to ``BabOptions(split="relu")``.
    ``SearchResult.row_min`` are proved bounds of the rows when the status is ``verified``.
    ``constraints``: k-ReLU hull rows (valid on ``region``) with starting multipliers per ReLU node name
    (:data:`absint.bab.beta.Constraints`); their multipliers are optimised in every sub-problem."""
    o = replace(options or BabOptions(), split="relu", bounding="alpha-beta")
    an = BabAnalysis(options=o, device=device)
    owner = np.arange(len(d)) if owner is None else np.asarray(owner)
    return an.make_search(graph, region, C, d, owner, root_bounds=root_bounds,
                          constraints=constraints).run(deadline=deadline)


# -- parallel workers --------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _probe_bounds(search: Search) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The ReLU-input bounds the α/β strategy of ``search`` proved at its root, by node name."""
    bb = getattr(search.s, "beta", None)
    if bb is None:
        return None
    return {name: (lo.cpu().numpy(), hi.cpu().numpy()) for name, lo, hi in zip(bb.pre_names, bb.root_lo, bb.root_hi)}


def clause_max(rows: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per clause, the best proved bound of its rows (a clause is refuted once any of its rows is)."""
    out = np.full(int(owner.max()) + 1 if len(owner) else 0, -np.inf)
    np.maximum.at(out, owner, rows)
    return out


def _best_partial(results: dict[str, SearchResult]) -> SearchResult:
    """The undecided portfolio result: the search that proved the most volume, with the row and
    clause bounds of both (each is a valid lower bound over the whole region, so the larger is)."""
    parts = list(results.values())
    best = max(parts, key=lambda r: r.proved)
    best.row_min = np.max(np.stack([r.row_min for r in parts]), axis=0)
    best.clause_min = np.max(np.stack([r.clause_min for r in parts]), axis=0)
    return best


def _worker_init(stop_event) -> None:
    torch.set_num_threads(1)
    _WORKER["stop"] = stop_event


def _worker_run(part, deadline) -> SearchResult:
    an, graph, region, C, d, owner, root_bounds = _WORKER["job"]
    s = an.make_search(graph, region, C, d, owner, root_bounds=root_bounds)
    stop = _WORKER["stop"]
    res = s.run(part, deadline=deadline, should_stop=stop.is_set)
    if res.status == "falsified":
        stop.set()
    return res


def _parallel(an: BabAnalysis, graph: Graph, region: InputBox, C, d, owner, s: Search,
              deadline: float | None, root_bounds: Any = None) -> SearchResult:
    """Seed ``4·workers`` open sub-problems in-process, then share them out among forked workers."""
    o = an.bab_options
    first = s.run(deadline=deadline, stop_when_open=4 * o.workers)
    if first.status != "stopped":
        return first
    items = first.open_items
    first.open_items = {}
    n = batch_len(items)
    parts = [batch_select(items, torch.arange(i, n, o.workers)) for i in range(o.workers)]
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    _WORKER["job"] = (an, graph, region, C, d, owner, root_bounds)  # inherited by the forked workers
    try:
        with ProcessPoolExecutor(o.workers, mp_context=ctx, initializer=_worker_init, initargs=(stop,)) as ex:
            results = list(ex.map(_worker_run, parts, [deadline] * len(parts)))
    finally:
        _WORKER.pop("job", None)
    # the seeding search's own closed leaves count too
    return merge_results(results, first)
