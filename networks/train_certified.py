#!/usr/bin/env python3
"""Train the LP-certified 64-200-10 digits network ``digits_fc1x200_lp.onnx``.

This is the "LP-NN" of the SDP-cert experiments (Raghunathan, Steinhardt & Liang, NeurIPS 2018,
Table 1), where the third network is trained with the LP-based certified objective of Wong &
Kolter, "Provable defenses against adversarial examples via the convex outer adversarial
polytope" (ICML 2018).

Certified objective (exactly Wong & Kolter's dual network for one hidden layer):

* the first layer's pre-activation bounds ``l, u`` over the input box ``[x − ε, x + ε] ∩ [0, 1]``
  are exact interval bounds (centre/radius form);
* each unstable ReLU (``l < 0 < u``) is relaxed by the triangle with the *same* slope
  ``d = u / (u − l)`` for the lower line ``z ≥ d s`` and the upper line ``z ≤ d (s − l)``; active
  neurons are the identity and inactive ones zero;
* for each wrong class ``j`` the margin ``y_true − y_j`` is bounded from below by propagating
  ``c = e_true − e_j`` backwards (choosing the lower or upper line by the sign of the
  coefficient) and minimising the resulting affine function of ``x`` over the input box exactly;
* the robust loss is the cross-entropy of the negated margin bounds ``−J`` (``J_true = 0``), as in
  Wong & Kolter.

Training: the same data split and Adam/cosine recipe as ``train_digits.py`` (60 epochs, lr 3e-3,
weight decay 1e-4, batch 64), seed 6, one thread, deterministic. The loss is
``(1 − k) · CE(clean) + k · CE(robust)``, with ``ε`` ramped linearly from 0 to ``--train-eps``
(default 0.1, the PGD network's training radius) and ``k`` from 0 to 0.5 over the first 20
epochs (the ramp-up of certified training, Gowal et al. 2018). About 10 s on one CPU thread.

Regenerate with (from the repository root)::

    python networks/train_certified.py
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_digits as td  # noqa: E402  (shared data split, model factory, export and checks)

LOGGER = logging.getLogger("absint.networks.train_certified")
FILE = "digits_fc1x200_lp.onnx"
SEED = 6


def lp_margin_bounds(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Wong–Kolter lower bounds ``J [B, 10]`` of ``logit_y − logit_j`` over the clipped ε-box.

    ``model`` must be ``Flatten > Linear > ReLU > Linear``. ``J[:, y] = 0``.
    """
    lin1, lin2 = model[1], model[3]
    xf = x.flatten(1)
    lo = (xf - eps).clamp(0.0, 1.0)
    hi = (xf + eps).clamp(0.0, 1.0)
    c0, r0 = (hi + lo) / 2, (hi - lo) / 2
    W1, b1, W2, b2 = lin1.weight, lin1.bias, lin2.weight, lin2.bias
    s_c = c0 @ W1.T + b1
    s_r = r0 @ W1.abs().T
    l, u = s_c - s_r, s_c + s_r
    unstable = (l < 0) & (u > 0)
    d = torch.where(u <= 0, torch.zeros_like(u), torch.where(l >= 0, torch.ones_like(u), u / (u - l).clamp(min=1e-12)))
    n_cls = W2.shape[0]
    eye = torch.eye(n_cls, dtype=x.dtype, device=x.device)
    c = eye[y][:, None, :] - eye[None, :, :]  # [B, 10(j), 10]: e_y − e_j
    a = c @ W2  # [B, j, H] coefficients of z
    # lower line z ≥ d s for a ≥ 0; upper line z ≤ d (s − l) for a < 0 (only unstable neurons).
    nu = a * d[:, None, :]
    const = (c * b2).sum(-1) - (torch.clamp(a, max=0) * (d * l * unstable)[:, None, :]).sum(-1)
    w_in = nu @ W1  # [B, j, 64]
    J = const + (nu * b1).sum(-1) + (w_in * c0[:, None, :]).sum(-1) - (w_in.abs() * r0[:, None, :]).sum(-1)
    return J  # row j = y is exactly 0 (c = 0)


def train_certified(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, epochs: int,
                    ramp_epochs: int, seed: int, mix: float = 0.5) -> nn.Sequential:
    """Adam + cosine schedule on ``(1 − k) CE(clean) + k CE(−J)`` with ε and k ramped up."""
    cfg = td.TrainConfig(epochs=epochs)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches)
    for epoch in range(epochs):
        ramp = min(1.0, (epoch + 1) / max(1, ramp_epochs))
        e, k = eps * ramp, mix * ramp
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        model.train()
        for b in range(n_batches):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            clean = F.cross_entropy(model(xb), yb)
            robust = F.cross_entropy(-lp_margin_bounds(model, xb, yb, e), yb)
            loss = (1 - k) * clean + k * robust
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            LOGGER.info("epoch %3d  eps %.3f  k %.2f  loss %.4f", epoch + 1, e, k, total / len(x))
    model.eval()
    return model


@torch.no_grad()
def lp_certified_accuracy(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Fraction of inputs whose Wong–Kolter margin bounds are all positive."""
    J = lp_margin_bounds(model, x, y, eps)
    J[torch.arange(len(y)), y] = 1.0
    return float((J > 0).all(dim=1).float().mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--train-eps", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--ramp-epochs", type=int, default=20)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    t0 = time.time()
    data = td.load_digits_split()
    x_tr, y_tr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_te, y_te = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    td.seed_everything(SEED)
    model = td.make_mlp([200])
    train_certified(model, x_tr, y_tr, args.train_eps, args.epochs, args.ramp_epochs, SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / FILE
    ops = td.export_onnx(model, path)
    diff = td.check_onnx_matches(model, path, data.x_test)
    info = {
        "file": FILE,
        "architecture": "Flatten > Linear(64,200) > ReLU > Linear(200,10)",
        "training": (f"Wong-Kolter LP bound (one hidden layer, slope u/(u-l)), loss (1-k)CE(clean)+k CE(-J), "
                     f"eps ramp 0->{args.train_eps:g} and k 0->0.5 over {args.ramp_epochs} epochs"),
        "optimizer": "Adam(lr=3e-3, weight_decay=1e-4), cosine schedule, batch 64",
        "epochs": args.epochs,
        "seed": SEED,
        "train_accuracy": round(td.accuracy(model, x_tr, y_tr), 4),
        "test_accuracy": round(td.accuracy(model, x_te, y_te), 4),
        "test_pgd_accuracy": {f"{e:g}": round(td.pgd_accuracy(model, x_te, y_te, e), 4) for e in td.EVAL_EPS},
        "test_lp_certified_accuracy": {f"{e:g}": round(lp_certified_accuracy(model, x_te, y_te, e), 4)
                                       for e in td.EVAL_EPS},
        "onnx_nodes": ops,
        "onnxruntime_max_abs_diff": diff,
        "sha256": td.sha256(path),
        "seconds": round(time.time() - t0, 1),
    }
    LOGGER.info("%s", json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
