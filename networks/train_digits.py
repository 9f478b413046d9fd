#!/usr/bin/env python3
"""Train and export the small networks bundled with absint.

All networks are trained on scikit-learn's bundled 8x8 handwritten digits data
set (``sklearn.datasets.load_digits``, 1797 images), so nothing has to be
downloaded.  Pixels (0..16) are scaled to [0, 1] and kept in NCHW layout
``[N, 1, 8, 8]``; no normalisation layer is used, so the verifier's input box
is simply ``[0, 1]^64`` intersected with the L-inf ball.

Outputs (into ``--out-dir``, default: the folder of this script):

* ``digits_mlp_2x64.onnx``          64-64-64-10 ReLU MLP, normal training
* ``digits_mlp_2x64_pgd.onnx``      same, PGD adversarial training
* ``digits_cnn.onnx``               Conv/BN/ReLU/MaxPool/Conv/ReLU/AvgPool/FC CNN
* ``digits_fc1x200_normal.onnx``    64-200-10 ReLU MLP, normal training
* ``digits_fc1x200_pgd.onnx``       same, PGD adversarial training
* ``digits_test.npz``               the held-out test split
* ``MANIFEST.json``                 architectures, accuracies, PGD accuracies

Every ONNX file is checked with onnxruntime against the torch model on the
whole test split (max abs logit difference < 1e-5).

Regenerate with (from the repository root)::

    python networks/train_digits.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOGGER = logging.getLogger("absint.networks.train_digits")

DEFAULT_OUT_DIR: Path = Path(__file__).resolve().parent
SEED: int = 0
SPLIT_RANDOM_STATE: int = 0
TEST_FRACTION: float = 0.3
OPSET: int = 13
INPUT_NAME: str = "input"
OUTPUT_NAME: str = "logits"
ORT_ATOL: float = 1e-5
ORT_RTOL: float = 1e-6
# L-inf radii (in [0,1] pixel units) at which every network's PGD accuracy is reported.
EVAL_EPS: tuple[float, ...] = (0.02, 0.05, 0.1)
EVAL_PGD_STEPS: int = 20


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class DigitsSplit:
    """Fixed stratified train/test split of the sklearn digits data set."""

    x_train: np.ndarray  # float32 [N, 1, 8, 8] in [0, 1]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    idx_test: np.ndarray  # indices of the test images in load_digits()


def load_digits_split(
    test_fraction: float = TEST_FRACTION, random_state: int = SPLIT_RANDOM_STATE
) -> DigitsSplit:
    """Load sklearn's 8x8 digits, scale to [0, 1] and split stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = (ds.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = ds.target.astype(np.int64)
    idx = np.arange(len(y), dtype=np.int64)
    idx_tr, idx_te = train_test_split(
        idx, test_size=test_fraction, stratify=y, random_state=random_state
    )
    idx_tr = np.sort(idx_tr)
    idx_te = np.sort(idx_te)
    return DigitsSplit(
        x_train=np.ascontiguousarray(x[idx_tr]),
        y_train=y[idx_tr],
        x_test=np.ascontiguousarray(x[idx_te]),
        y_test=y[idx_te],
        idx_test=idx_te,
    )


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #
def make_mlp(hidden: list[int], in_features: int = 64, n_classes: int = 10) -> nn.Sequential:
    """Flatten followed by a fully-connected ReLU network."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, n_classes))
    return nn.Sequential(*layers)


def make_cnn(n_classes: int = 10) -> nn.Sequential:
    """Small CNN exercising Conv, BatchNorm, MaxPool and AveragePool."""
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),  # 8x8x8
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x4x4
        nn.Conv2d(8, 16, kernel_size=3, padding=1),  # 16x4x4
        nn.ReLU(),
        nn.AvgPool2d(2),  # 16x2x2
        nn.Flatten(),  # 64
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, n_classes),
    )


# --------------------------------------------------------------------------- #
# PGD
# --------------------------------------------------------------------------- #
def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf PGD on the cross-entropy loss, projected to the eps-ball and [0, 1].

    The model's train/eval mode is left untouched; parameters get no gradients.
    """
    if eps <= 0.0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    x0 = x.detach()
    lo = (x0 - eps).clamp(0.0, 1.0)
    hi = (x0 + eps).clamp(0.0, 1.0)
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype) * 2.0 - 1.0
        x_adv = torch.minimum(torch.maximum(x0 + eps * noise, lo), hi)
    else:
        x_adv = x0.clone()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, lo), hi)
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    return x_adv.detach()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Clean top-1 accuracy (model must already be in eval mode)."""
    return float((model(x).argmax(dim=1) == y).float().mean())


def pgd_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = SEED
) -> float:
    """Accuracy under a 20-step random-start L-inf PGD attack (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    x_adv = pgd_attack(model, x, y, eps, steps=EVAL_PGD_STEPS, generator=gen)
    return accuracy(model, x_adv, y)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    pgd_eps: float = 0.0  # 0 -> normal training
    pgd_steps: int = 10
    eps_warmup_epochs: int = 0  # linearly ramp eps over the first epochs


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and request deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int
) -> nn.Module:
    """Train with Adam + cosine schedule; PGD adversarial training if cfg.pgd_eps > 0."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * n_batches)
    for epoch in range(cfg.epochs):
        if cfg.pgd_eps > 0 and cfg.eps_warmup_epochs > 0:
            eps = cfg.pgd_eps * min(1.0, (epoch + 1) / cfg.eps_warmup_epochs)
        else:
            eps = cfg.pgd_eps
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for b in range(n_batches):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if eps > 0:
                model.eval()
                xb = pgd_attack(model, xb, yb, eps, steps=cfg.pgd_steps, generator=gen)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 20 == 0 or epoch == cfg.epochs - 1:
            LOGGER.debug("epoch %3d  eps %.3f  loss %.4f", epoch + 1, eps, total / len(x))
    model.eval()
    return model


# --------------------------------------------------------------------------- #
# Export / check
# --------------------------------------------------------------------------- #
def export_onnx(model: nn.Module, path: Path) -> list[str]:
    """Export to ONNX (opset 13, dynamic batch) and return the graph's op types in order.

    ``training=PRESERVE`` with the model in eval mode keeps BatchNormalization as
    its own node (the default EVAL mode folds it into the preceding Conv); with
    PRESERVE torch recommends ``do_constant_folding=False``.
    """
    import onnx

    model.eval()
    dummy = torch.zeros(1, 1, 8, 8)
    with warnings.catch_warnings():
        # The legacy TorchScript exporter (dynamo=False) is deprecated but gives plain graphs.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return [node.op_type for node in proto.graph.node]


def check_onnx_matches(model: nn.Module, path: Path, x: np.ndarray) -> float:
    """Run the ONNX file with onnxruntime on ``x``; return max abs diff vs torch.

    Passes if every logit satisfies ``|ort - torch| <= ORT_ATOL + ORT_RTOL * |torch|``
    (float32 rounding of logits of size ~30 alone is ~4e-6 per ulp, so a purely
    absolute 1e-5 bound is only a few ulps there); raises ``RuntimeError`` otherwise.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    err = np.abs(got - want)
    diff = float(err.max())
    if not np.all(err <= ORT_ATOL + ORT_RTOL * np.abs(want)):
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {diff:.3g}")
    if diff >= ORT_ATOL:
        LOGGER.warning("%s: max abs diff %.3g >= %g (within relative tolerance)",
                       path.name, diff, ORT_ATOL)
    return diff


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- #
# Network specs
# --------------------------------------------------------------------------- #
@dataclass
class NetSpec:
    """One bundled network: how to build it and how to train it."""

    file: str
    arch: str
    factory: Callable[[], nn.Module]
    cfg: TrainConfig
    seed: int
    notes: str = ""
    baseline: str | None = None  # normally trained counterpart (for pgd nets)
    required_ops: frozenset[str] = field(default_factory=lambda: frozenset({"Gemm", "Relu"}))


def build_specs(train_eps: float, epochs_scale: float = 1.0) -> list[NetSpec]:
    """The list of networks to produce (``epochs_scale`` < 1 for quick smoke runs)."""

    def ep(n: int) -> int:
        return max(1, int(round(n * epochs_scale)))

    normal = TrainConfig(epochs=ep(60))
    adv = TrainConfig(epochs=ep(60), pgd_eps=train_eps, pgd_steps=10, eps_warmup_epochs=ep(10))
    cnn = TrainConfig(epochs=ep(80), weight_decay=1e-3)
    return [
        NetSpec(
            "digits_mlp_2x64.onnx",
            "Flatten > Linear(64,64) > ReLU > Linear(64,64) > ReLU > Linear(64,10)",
            lambda: make_mlp([64, 64]),
            normal,
            seed=1,
            notes="default network of the CLI",
        ),
        NetSpec(
            "digits_mlp_2x64_pgd.onnx",
            "Flatten > Linear(64,64) > ReLU > Linear(64,64) > ReLU > Linear(64,10)",
            lambda: make_mlp([64, 64]),
            adv,
            seed=2,
            baseline="digits_mlp_2x64.onnx",
        ),
        NetSpec(
            "digits_cnn.onnx",
            "Conv(1>8,3x3,p1) > BatchNorm2d(8) > ReLU > MaxPool(2) > Conv(8>16,3x3,p1) > ReLU"
            " > AvgPool(2) > Flatten > Linear(64,32) > ReLU > Linear(32,10)",
            make_cnn,
            cnn,
            seed=3,
            required_ops=frozenset(
                {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "Flatten", "Gemm"}
            ),
        ),
        NetSpec(
            "digits_fc1x200_normal.onnx",
            "Flatten > Linear(64,200) > ReLU > Linear(200,10)",
            lambda: make_mlp([200]),
            normal,
            seed=4,
            notes="for SDP-cert experiments (Raghunathan et al. 2018)",
        ),
        NetSpec(
            "digits_fc1x200_pgd.onnx",
            "Flatten > Linear(64,200) > ReLU > Linear(200,10)",
            lambda: make_mlp([200]),
            adv,
            seed=5,
            baseline="digits_fc1x200_normal.onnx",
            notes="for SDP-cert experiments (Raghunathan et al. 2018)",
        ),
    ]


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                   help="output folder (default: %(default)s)")
    p.add_argument("--train-eps", type=float, default=0.1,
                   help="L-inf eps used for PGD adversarial training (default: %(default)s)")
    p.add_argument("--epochs-scale", type=float, default=1.0,
                   help="multiply all epoch counts (for quick smoke runs)")
    p.add_argument("--only", nargs="*", default=None, metavar="FILE",
                   help="only (re)build these network files; their MANIFEST entries are "
                        "replaced, the others kept")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, export, verify and write the manifest; return the manifest dict."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    torch.set_num_threads(1)
    seed_everything(SEED)
    t_start = time.time()

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits_split()
    np.savez_compressed(
        out / "digits_test.npz",
        images=data.x_test.astype(np.float32),
        labels=data.y_test.astype(np.int64),
        indices=data.idx_test.astype(np.int64),
    )
    LOGGER.info("digits split: %d train / %d test", len(data.y_train), len(data.y_test))
    x_tr, y_tr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_te, y_te = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)

    specs = build_specs(args.train_eps, args.epochs_scale)
    if args.only:
        specs = [s for s in specs if s.file in set(args.only)]
    nets: dict[str, dict[str, Any]] = {}
    if args.only and (out / "MANIFEST.json").is_file():
        nets = json.loads((out / "MANIFEST.json").read_text()).get("networks", {})
    for spec in specs:
        t0 = time.time()
        seed_everything(spec.seed)
        model = spec.factory()
        train(model, x_tr, y_tr, spec.cfg, seed=spec.seed)
        path = out / spec.file
        ops = export_onnx(model, path)
        missing = spec.required_ops - set(ops)
        if missing:
            raise RuntimeError(f"{spec.file}: exported graph lacks ops {sorted(missing)}: {ops}")
        diff = check_onnx_matches(model, path, data.x_test)
        entry: dict[str, Any] = {
            "architecture": spec.arch,
            "training": (
                f"pgd(eps={spec.cfg.pgd_eps:g}, steps={spec.cfg.pgd_steps}, "
                f"step=2.5*eps/steps, random start, eps warm-up {spec.cfg.eps_warmup_epochs} ep)"
                if spec.cfg.pgd_eps > 0 else "normal"
            ),
            "train_eps": spec.cfg.pgd_eps,
            "optimizer": (
                f"Adam(lr={spec.cfg.lr:g}, weight_decay={spec.cfg.weight_decay:g}), cosine "
                f"schedule, batch {spec.cfg.batch_size}, cross-entropy"
            ),
            "epochs": spec.cfg.epochs,
            "seed": spec.seed,
            "num_params": int(sum(p.numel() for p in model.parameters())),
            "train_accuracy": round(accuracy(model, x_tr, y_tr), 4),
            "test_accuracy": round(accuracy(model, x_te, y_te), 4),
            "test_pgd_accuracy": {
                f"{e:g}": round(pgd_accuracy(model, x_te, y_te, e), 4) for e in EVAL_EPS
            },
            "onnx_ops": sorted(set(ops)),
            "onnx_nodes": ops,
            "onnxruntime_max_abs_diff": diff,
            "bytes": path.stat().st_size,
            "sha256": sha256(path),
        }
        if spec.baseline:
            entry["baseline"] = spec.baseline
        if spec.notes:
            entry["notes"] = spec.notes
        nets[spec.file] = entry
        LOGGER.info(
            "%-28s train %.3f test %.3f pgd@0.05 %.3f pgd@0.1 %.3f (%.1fs)",
            spec.file, entry["train_accuracy"], entry["test_accuracy"],
            entry["test_pgd_accuracy"]["0.05"], entry["test_pgd_accuracy"]["0.1"],
            time.time() - t0,
        )

    manifest: dict[str, Any] = {
        "generated_by": "python networks/train_digits.py",
        "dataset": {
            "name": "sklearn.datasets.load_digits (8x8, 10 classes, 1797 images)",
            "preprocessing": "pixel / 16 -> [0, 1], float32, NCHW [N, 1, 8, 8]; no normalisation",
            "split": f"sklearn train_test_split(test_size={TEST_FRACTION}, stratify=y, "
                     f"random_state={SPLIT_RANDOM_STATE})",
            "n_train": int(len(data.y_train)),
            "n_test": int(len(data.y_test)),
            "test_file": "digits_test.npz (images float32 [N,1,8,8], labels int64 [N], "
                         "indices int64 [N] into load_digits())",
        },
        "onnx": {
            "opset": OPSET,
            "input": f"{INPUT_NAME}: float32 [batch, 1, 8, 8]",
            "output": f"{OUTPUT_NAME}: float32 [batch, 10]",
        },
        "pgd_eval": (
            f"L-inf PGD, {EVAL_PGD_STEPS} steps, step 2.5*eps/{EVAL_PGD_STEPS}, one random "
            "start (seed 0), clipped to [0,1], on the test split; eps in pixel units of [0,1]"
        ),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "networks": nets,
    }
    try:
        import onnx
        import onnxruntime
        import sklearn

        manifest["versions"].update(
            onnx=onnx.__version__, onnxruntime=onnxruntime.__version__, sklearn=sklearn.__version__
        )
    except ImportError:  # pragma: no cover
        pass
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # Final human-readable summary.
    hdr = f"{'file':<28} {'train':>6} {'test':>6} " + " ".join(
        f"{'pgd@' + format(e, 'g'):>8}" for e in EVAL_EPS
    ) + "  ops"
    print(hdr)
    print("-" * len(hdr))
    for name, e in nets.items():
        if args.only and name not in args.only:
            continue
        pgd = " ".join(f"{e['test_pgd_accuracy'][format(x, 'g')]:>8.3f}" for x in EVAL_EPS)
        print(f"{name:<28} {e['train_accuracy']:>6.3f} {e['test_accuracy']:>6.3f} {pgd}  "
              f"{','.join(e['onnx_ops'])}")
    print(f"total time {time.time() - t_start:.1f}s; outputs in {out}")
    return manifest


if __name__ == "__main__":
    main()
