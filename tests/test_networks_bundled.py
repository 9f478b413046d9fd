"""Sanity checks for the small networks bundled in ``networks/``.

The networks are produced by ``python networks/train_digits.py``; these tests
only load the committed artefacts (no training) and run in about a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

NETWORKS_DIR: Path = Path(__file__).resolve().parents[1] / "networks"
EXPECTED_FILES: tuple[str, ...] = (
    "digits_mlp_2x64.onnx",
    "digits_mlp_2x64_pgd.onnx",
    "digits_cnn.onnx",
    "digits_fc1x200_normal.onnx",
    "digits_fc1x200_pgd.onnx",
)
N_TEST: int = 540


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    """Parsed ``networks/MANIFEST.json``."""
    return json.loads((NETWORKS_DIR / "MANIFEST.json").read_text())


@pytest.fixture(scope="module")
def test_data() -> tuple[np.ndarray, np.ndarray]:
    """Bundled test split: images [N,1,8,8] float32 in [0,1], labels int64."""
    with np.load(NETWORKS_DIR / "digits_test.npz") as d:
        return d["images"], d["labels"]


def _session(name: str) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(NETWORKS_DIR / name), opts, providers=["CPUExecutionProvider"]
    )


def test_all_files_present_and_small(manifest: dict[str, Any]) -> None:
    """Every expected file exists, is listed in the manifest, and the folder is small."""
    assert set(manifest["networks"]) == set(EXPECTED_FILES)
    for name in EXPECTED_FILES:
        assert (NETWORKS_DIR / name).is_file(), name
    total = sum(p.stat().st_size for p in NETWORKS_DIR.iterdir() if p.is_file())
    assert total < 2 * 1024 * 1024


def test_test_split(test_data: tuple[np.ndarray, np.ndarray]) -> None:
    """The test split has the documented shape, dtype, range and all 10 classes."""
    images, labels = test_data
    assert images.dtype == np.float32 and images.shape == (N_TEST, 1, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (N_TEST,)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels).tolist()) == set(range(10))


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_sha256_matches_manifest(name: str, manifest: dict[str, Any]) -> None:
    """The manifest describes exactly the committed file."""
    digest = hashlib.sha256((NETWORKS_DIR / name).read_bytes()).hexdigest()
    assert digest == manifest["networks"][name]["sha256"]


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_io_signature_and_dynamic_batch(
    name: str, test_data: tuple[np.ndarray, np.ndarray]
) -> None:
    """Input 'input' [batch,1,8,8], output 'logits' [batch,10], any batch size works."""
    sess = _session(name)
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert inp.name == "input" and out.name == "logits"
    assert inp.type == "tensor(float)" and out.type == "tensor(float)"
    assert list(inp.shape[1:]) == [1, 8, 8] and not isinstance(inp.shape[0], int)
    assert list(out.shape[1:]) == [10]
    images, _ = test_data
    for batch in (1, 7):
        (y,) = sess.run(["logits"], {"input": images[:batch]})
        assert y.shape == (batch, 10) and y.dtype == np.float32
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_accuracy(
    name: str, manifest: dict[str, Any], test_data: tuple[np.ndarray, np.ndarray]
) -> None:
    """Clean test accuracy, computed here, is sane; the manifest reports it."""
    images, labels = test_data
    (logits,) = _session(name).run(["logits"], {"input": images})
    acc = float(np.mean(logits.argmax(axis=1) == labels))
    entry = manifest["networks"][name]
    threshold = 0.9 if entry["train_eps"] == 0 else 0.85
    assert acc > threshold, f"{name}: accuracy {acc:.3f}"
    assert abs(acc - entry["test_accuracy"]) <= 2.0 / N_TEST, "MANIFEST.json is out of date"


def _pgd_accuracy(name: str, images: np.ndarray, labels: np.ndarray, eps: float) -> float:
    """Accuracy under the manifest's attack: L-inf PGD, 20 steps of 2.5·eps/20, one random start,
    clipped to [0, 1] (on the network as absint loads it, in float64)."""
    import torch

    import absint

    net = absint.load_network(NETWORKS_DIR / name)
    x0 = torch.as_tensor(images, dtype=torch.float64)
    y = torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(0)
    x = (x0 + eps * (2 * torch.rand(x0.shape, generator=gen, dtype=torch.float64) - 1)).clamp(0, 1)
    for _ in range(20):
        x = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net.forward(x).reshape(len(x), -1), y)
        (grad,) = torch.autograd.grad(loss, x)
        x = torch.minimum(torch.maximum(x + 2.5 * eps / 20 * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    with torch.no_grad():
        return float((net.forward(x).reshape(len(x), -1).argmax(1) == y).double().mean())


def test_adversarial_training_helped(manifest: dict[str, Any], test_data: tuple[np.ndarray, np.ndarray]) -> None:
    """PGD-trained nets are more PGD-robust than their normal counterparts (attacked here)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    images, labels = test_data
    nets = manifest["networks"]
    pgd_nets = [n for n, e in nets.items() if e["train_eps"] > 0]
    assert len(pgd_nets) == 2
    for name in pgd_nets:
        base = nets[name]["baseline"]
        for eps in (0.05, 0.1):
            robust, plain = (_pgd_accuracy(n, images, labels, eps) for n in (name, base))
            assert robust > plain + 0.05, (name, base, eps, robust, plain)
            # the manifest's numbers come from the same attack (another random start)
            assert abs(robust - nets[name]["test_pgd_accuracy"][str(eps)]) <= 0.05


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_onnx_graph(name: str, manifest: dict[str, Any]) -> None:
    """Opset 13, node list as in the manifest; the CNN keeps BN and both pools."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(NETWORKS_DIR / name))
    onnx.checker.check_model(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 13
    ops = [n.op_type for n in model.graph.node]
    assert ops == manifest["networks"][name]["onnx_nodes"]
    assert set(ops) <= {
        "Flatten", "Gemm", "Relu", "Conv", "BatchNormalization", "MaxPool", "AveragePool",
    }
    if name == "digits_cnn.onnx":
        assert {"Conv", "BatchNormalization", "MaxPool", "AveragePool"} <= set(ops)
