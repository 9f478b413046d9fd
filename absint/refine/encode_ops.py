"""LP/MILP rows of the non-linear ops, given sound bounds of their inputs.

Each function appends variables and rows for one node to a :class:`~absint.solvers.LinearModel`
and returns the node's variables with their bounds. Every row holds for every reachable
``(input, output)`` pair of the op whenever the given input bounds are sound (real arithmetic;
constants that come out of a float computation are rounded outward).

* ReLU ``y = max(z, 0)``: exact where the sign is proved; an unstable neuron gets the triangle
  ``y ≥ 0, y ≥ z, (u − l) y − u z ≤ −u l`` (Ehlers, ATVA 2017) or, when selected, the big-M
  encoding with a binary ``a`` (Tjeng, Xiao, Tedrake, ICLR 2019): ``y ≤ z − l (1 − a)``,
  ``y ≤ u a``.
* Sigmoid / tanh: the two DeepPoly lines of :mod:`absint.domains.relaxations` (Singh et al.,
  POPL 2019; what ERAN's refinepoly puts into its LPs) plus the box ``f(l) ≤ y ≤ f(u)``.
* MaxPool ``y = max_i x_i`` per window: entries that can never be the maximum (``u_i <
  max_j l_j``) are dropped; ``y ≥ x_i`` for the rest, ``y ≤ Σ_i (x_i − l_i) + max_j l_j`` (LP),
  and when selected the exact encoding of Tjeng et al.: binaries ``a_i`` with ``Σ a_i = 1`` and
  ``y ≤ x_i + (u_max − l_i)(1 − a_i)``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from absint.solvers import LinearModel

__all__ = ["relu_rows", "s_shaped_rows", "maxpool_rows", "maxpool_windows", "KReluRows"]

_U = 2.0 ** -53


def _up(x: np.ndarray, scale: np.ndarray | float, n: int = 4) -> np.ndarray:
    """``x`` rounded up past the error of an ``n``-operation float computation of magnitude ``scale``."""
    return np.nextafter(x + 2.0 * n * _U * np.abs(scale) + 1e-300, np.inf)


def _down(x: np.ndarray, scale: np.ndarray | float, n: int = 4) -> np.ndarray:
    return np.nextafter(x - 2.0 * n * _U * np.abs(scale) - 1e-300, -np.inf)


class KReluRows:
    """Joint constraints ``h0 + hx·z[g] + hy·y[g] ≥ 0`` of one ReLU node (kPoly hull rows).

    ``groups`` are tuples of flat neuron indices; ``hulls[i]`` has shape ``(r, 1 + 2k)``.
    """

    def __init__(self, groups: list[tuple[int, ...]] | None = None, hulls: list[np.ndarray] | None = None) -> None:
        self.groups: list[tuple[int, ...]] = list(groups or [])
        self.hulls: list[np.ndarray] = list(hulls or [])

    @property
    def num_rows(self) -> int:
        return int(sum(h.shape[0] for h in self.hulls))


def _selection(want: np.ndarray | bool | None, n: int) -> np.ndarray:
    sel = np.zeros(n, dtype=bool)
    if want is True:
        sel[:] = True
    elif want is not None and want is not False:
        sel[np.asarray(want, dtype=np.int64)] = True
    return sel


def relu_rows(m: LinearModel, name: str, z: np.ndarray, l: np.ndarray, u: np.ndarray,
              want: np.ndarray | bool | None, rows: KReluRows | None) -> tuple[np.ndarray, tuple, np.ndarray]:
    """ReLU rows (see the module docstring); returns ``(y, (ylo, yhi), neurons given a binary)``."""
    n = len(z)
    ylo, yhi = np.maximum(l, 0.0), np.maximum(u, 0.0)
    y = m.add_vars(ylo, yhi, name=name)
    ia = np.flatnonzero(l >= 0)
    if ia.size:  # y = z
        eye = sp.identity(ia.size, format="csr")
        m.add_constraints(sp.hstack([eye, -eye], format="csr"), 0.0, 0.0, cols=np.concatenate([y[ia], z[ia]]),
                          name=f"{name}:active")
    # inactive neurons (u <= 0): y has the bounds [0, 0] already
    unstable = (l < 0) & (u > 0)
    sel = _selection(want, n) & unstable
    iu = np.flatnonzero(unstable)
    ib = np.flatnonzero(sel)
    if iu.size:
        eye = sp.identity(iu.size, format="csr")
        m.add_constraints(sp.hstack([eye, -eye], format="csr"), 0.0, np.inf, cols=np.concatenate([y[iu], z[iu]]),
                          name=f"{name}:ge")  # y - z >= 0
        tri = iu[~sel[iu]]
        if tri.size:  # (u - l) y - u z <= -u l
            lu, uu = l[tri], u[tri]
            a = uu - lu  # the coefficient as stored (rounded): the right-hand side must hold for it
            A = sp.hstack([sp.diags(a), sp.diags(-uu)], format="csr")
            # a·y − u·z is largest at a vertex of the triangle: (l, 0) gives −u·l, (u, u) gives
            # u·(a − u) (0 when a = u − l exactly), (0, 0) gives 0; each rounded up
            rhs = np.maximum(_up(-uu * lu, uu * lu, 1), np.maximum(_up(uu * (a - uu), uu * (a + uu), 2), 0.0))
            m.add_constraints(A, -np.inf, rhs, cols=np.concatenate([y[tri], z[tri]]), name=f"{name}:tri")
        if ib.size:
            a = m.add_binary_vars(ib.size, name=f"{name}:bin")
            lb, ub = l[ib], u[ib]
            e = sp.identity(ib.size, format="csr")
            m.add_constraints(sp.hstack([e, -e, sp.diags(-lb)], format="csr"), -np.inf, -lb,
                              cols=np.concatenate([y[ib], z[ib], a]), name=f"{name}:bigm1")  # y <= z - l (1 - a)
            m.add_constraints(sp.hstack([e, sp.diags(-ub)], format="csr"), -np.inf, 0.0,
                              cols=np.concatenate([y[ib], a]), name=f"{name}:bigm2")  # y <= u a
    if rows is not None and rows.hulls:
        _krelu(m, name, z, y, rows)
    return y, (ylo, yhi), ib


def _krelu(m: LinearModel, name: str, z: np.ndarray, y: np.ndarray, rows: KReluRows) -> None:
    data, ri, ci, rhs = [], [], [], []
    r0 = 0
    for grp, H in zip(rows.groups, rows.hulls):
        gi = np.asarray(grp, dtype=np.int64)
        H = np.asarray(H, dtype=np.float64)
        if H.size == 0:
            continue
        kk = gi.size
        nr = H.shape[0]
        data.append(H[:, 1:1 + 2 * kk].reshape(-1))
        ri.append(np.repeat(np.arange(r0, r0 + nr), 2 * kk))
        ci.append(np.tile(np.concatenate([z[gi], y[gi]]), nr))
        rhs.append(-H[:, 0])
        r0 += nr
    if r0:
        A = sp.csr_matrix((np.concatenate(data), (np.concatenate(ri), np.concatenate(ci))), shape=(r0, m.num_vars))
        m.add_constraints(A, np.concatenate(rhs), np.inf, name=f"{name}:krelu")


def s_shaped_lines(kind: str, l: np.ndarray, u: np.ndarray):
    """DeepPoly lines ``(ls, lo, us, uo)`` of sigmoid/tanh on ``[l, u]`` and the values ``f(l), f(u)``.

    The one place the encoding reads the relaxation table (today :mod:`absint.domains.relaxations`).
    """
    from absint.domains.relaxations import sigmoid_deeppoly, tanh_deeppoly

    fn, rel = (torch.sigmoid, sigmoid_deeppoly) if kind == "sigmoid" else (torch.tanh, tanh_deeppoly)
    lt, ut = torch.as_tensor(l, dtype=torch.float64), torch.as_tensor(u, dtype=torch.float64)
    lines = rel(lt, ut)
    arr = [t.numpy().copy() for t in (lines.lower_slope, lines.lower_offset, lines.upper_slope, lines.upper_offset)]
    return (*arr, fn(lt).numpy().copy(), fn(ut).numpy().copy())


def s_shaped_rows(m: LinearModel, name: str, kind: str, z: np.ndarray, l: np.ndarray, u: np.ndarray,
                  given: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, tuple]:
    """Sigmoid/tanh rows: ``ls z + lo ≤ y ≤ us z + uo`` and ``f(l) ≤ y ≤ f(u)`` (outward-rounded)."""
    ls, lo, us, uo, fl, fu = s_shaped_lines(kind, l, u)
    span = np.maximum(np.abs(l), np.abs(u))
    ylo = _down(fl, fl, 8)
    yhi = _up(fu, fu, 8)
    if given is not None:
        ylo = np.maximum(ylo, np.asarray(given[0], dtype=np.float64).reshape(-1))
        yhi = np.minimum(yhi, np.asarray(given[1], dtype=np.float64).reshape(-1))
        bad = ylo > yhi
        if bad.any():  # crossed only by rounding noise: keep the computed box there
            ylo[bad], yhi[bad] = _down(fl, fl, 8)[bad], _up(fu, fu, 8)[bad]
    y = m.add_vars(ylo, yhi, name=name)
    n = len(z)
    eye = sp.identity(n, format="csr")
    # y - ls z >= lo ;  y - us z <= uo  (offsets widened by the error of evaluating f and the lines)
    lo_w = _down(lo, np.abs(fl) + np.abs(ls) * span + np.abs(lo), 16)
    uo_w = _up(uo, np.abs(fu) + np.abs(us) * span + np.abs(uo), 16)
    m.add_constraints(sp.hstack([eye, sp.diags(-ls)], format="csr"), lo_w, np.inf, cols=np.concatenate([y, z]),
                      name=f"{name}:lower")
    m.add_constraints(sp.hstack([eye, sp.diags(-us)], format="csr"), -np.inf, uo_w, cols=np.concatenate([y, z]),
                      name=f"{name}:upper")
    return y, (ylo, yhi)


def maxpool_windows(in_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> np.ndarray:
    """Flat input indices of every pooling window: ``[C·Ho·Wo, kh·kw]``, ``-1`` for padding."""
    C, H, W = in_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    r = (np.arange(Ho) * sh - ph)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    c = (np.arange(Wo) * sw - pw)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    r, c = np.broadcast_arrays(r, c)  # [Ho, Wo, kh, kw]
    ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    base = (np.arange(C) * H * W)[:, None, None, None, None]
    idx = np.where(ok[None], base + r[None] * W + c[None], -1)
    return idx.reshape(C * Ho * Wo, kh * kw)


def maxpool_rows(m: LinearModel, name: str, x: np.ndarray, l: np.ndarray, u: np.ndarray, windows: np.ndarray,
                 want: np.ndarray | bool | None) -> tuple[np.ndarray, tuple, np.ndarray]:
    """Max-pooling rows (see the module docstring); returns ``(y, (ylo, yhi), windows given binaries)``."""
    P, K = windows.shape
    valid = windows >= 0
    safe = np.where(valid, windows, 0)
    wl = np.where(valid, l[safe], -np.inf)
    wu = np.where(valid, u[safe], -np.inf)
    ylo, yhi = wl.max(axis=1), wu.max(axis=1)
    cand = valid & (wu >= ylo[:, None])  # entries that can be the maximum
    y = m.add_vars(ylo, yhi, name=name)
    ncand = cand.sum(axis=1)
    exact = np.flatnonzero(ncand == 1)
    if exact.size:  # one possible maximum: y = x_i
        xi = x[safe[exact, cand[exact].argmax(axis=1)]]
        eye = sp.identity(exact.size, format="csr")
        m.add_constraints(sp.hstack([eye, -eye], format="csr"), 0.0, 0.0, cols=np.concatenate([y[exact], xi]),
                          name=f"{name}:exact")
    multi = np.flatnonzero(ncand > 1)
    sel = _selection(want, P)[multi] if multi.size else np.zeros(0, dtype=bool)
    chosen = multi[sel]
    if multi.size:
        p_idx, k_idx = np.nonzero(cand[multi])
        wins = multi[p_idx]
        cols_x = x[safe[wins, k_idx]]
        nnz = p_idx.size
        # y - x_i >= 0 for every candidate i
        A = sp.csr_matrix((np.concatenate([np.ones(nnz), -np.ones(nnz)]),
                           (np.tile(np.arange(nnz), 2), np.concatenate([y[wins], cols_x]))), shape=(nnz, m.num_vars))
        m.add_constraints(A, 0.0, np.inf, name=f"{name}:ge")
        # y - sum_i x_i <= max_j l_j - sum_i l_i   (relaxed windows only)
        relaxed = multi[~sel]
        if relaxed.size:
            keep = ~sel[p_idx]
            pr = np.searchsorted(relaxed, multi[p_idx[keep]])
            r = relaxed.size
            A = sp.csr_matrix((np.concatenate([np.ones(r), -np.ones(int(keep.sum()))]),
                               (np.concatenate([np.arange(r), pr]), np.concatenate([y[relaxed], cols_x[keep]]))),
                              shape=(r, m.num_vars))
            cl = np.where(cand[relaxed], wl[relaxed], 0.0)
            rhs = ylo[relaxed] - cl.sum(axis=1)
            m.add_constraints(A, -np.inf, _up(rhs, np.abs(cl).sum(axis=1) + np.abs(ylo[relaxed]), K + 2),
                              name=f"{name}:sum")
        if chosen.size:
            keep = sel[p_idx]
            pw, kw_, xc = multi[p_idx[keep]], k_idx[keep], cols_x[keep]
            nb = pw.size
            a = m.add_binary_vars(nb, name=f"{name}:bin")
            # sum_i a_i = 1 per window
            pos = np.searchsorted(chosen, pw)
            A = sp.csr_matrix((np.ones(nb), (pos, a)), shape=(chosen.size, m.num_vars))
            m.add_constraints(A, 1.0, 1.0, name=f"{name}:one")
            # y - x_i + M_i a_i <= M_i,  M_i = u_max - l_i (rounded up)
            M = _up(yhi[pw] - wl[pw, kw_], np.abs(yhi[pw]) + np.abs(wl[pw, kw_]), 2)
            A = sp.csr_matrix((np.concatenate([np.ones(nb), -np.ones(nb), M]),
                               (np.tile(np.arange(nb), 3), np.concatenate([y[pw], xc, a]))), shape=(nb, m.num_vars))
            m.add_constraints(A, -np.inf, M, name=f"{name}:bigm")
    return y, (ylo, yhi), chosen
