"""Image data sets for robustness experiments.

Formats: ``.npz`` with ``images`` (``[N, ...]`` in [0, 1]) and ``labels``; ERAN-style ``.csv``
with one image per row (label, then pixel values 0–255, channels last), as in
``cifar10_test_100.csv``. Images are returned in the network's input shape (channels first).
"""
from __future__ import annotations

from pathlib import Path

from absint.errors import SpecError


def bundled(name: str = "") -> Path:
    """Path of a file shipped with absint: the small networks and data of ``networks/`` in a source
    tree, package data ``absint/networks`` in an installed wheel (``bundled()`` is the folder)."""
    import absint.networks

    folder = Path(absint.networks.__file__).resolve().parent
    path = folder / name
    if name and not path.exists():
        available = sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".npz", ".json"))
        raise SpecError(f"no bundled file {name!r}; bundled: {', '.join(available)}")
    return path


def load_images(path: str | Path, input_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images [N, *input_shape] float64 in [0, 1], labels [N] int64)`` from ``path``."""
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such data file")
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "images" not in f or "labels" not in f:
                raise SpecError(f"{path}: an .npz data set needs arrays 'images' and 'labels' (has {list(f)})")
            images = np.asarray(f["images"], dtype=np.float64)
            labels = np.asarray(f["labels"], dtype=np.int64)
        if input_shape is not None:
            images = images.reshape(len(images), *input_shape)
    elif path.suffix == ".csv":
        raw = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        labels = raw[:, 0].astype(np.int64)
        pixels = raw[:, 1:] / 255.0
        if input_shape is not None and len(input_shape) == 3:
            c, h, w = input_shape
            if pixels.shape[1] != c * h * w:
                raise SpecError(f"{path}: rows have {pixels.shape[1]} values, network expects {c * h * w}")
            images = pixels.reshape(len(pixels), h, w, c).transpose(0, 3, 1, 2)  # HWC -> CHW
        else:
            images = pixels if input_shape is None else pixels.reshape(len(pixels), *input_shape)
    else:
        raise SpecError(f"{path}: unsupported data format {path.suffix!r} (use .npz or ERAN .csv)")
    if images.min() < 0 or images.max() > 1:
        raise SpecError(f"{path}: pixel values must lie in [0, 1] (found [{images.min()}, {images.max()}])")
    return images, labels
