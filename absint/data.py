"""Image data sets for robustness experiments.

Formats: ``.npz`` with ``images`` (``[N, ...]`` in [0, 1]) and ``labels``; ERAN-style ``.csv``
with one image per row (label, then pixel values 0–255, channels last), as in
``cifar10_test_100.csv``. Images are returned in the network's input shape (channels first).

Every way a data file can be wrong (missing, not an archive, object arrays, wrong shape, labels
that are not whole numbers, pixels outside [0, 1] or not finite) raises :class:`DataFileError`
naming the file; nothing is unpickled.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from absint.errors import SpecError

if TYPE_CHECKING:
    import numpy as np


class DataFileError(SpecError):
    """An image data file cannot be read or does not fit the network."""


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


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataFileError(f"{path}: not an .npz archive (a single .npy array?); "
                                "save the data with numpy.savez(path, images=..., labels=...)")
        with archive as f:
            if "images" not in f.files or "labels" not in f.files:
                raise DataFileError(f"{path}: an .npz data set needs arrays 'images' and 'labels' (has {f.files})")
            return np.asarray(f["images"]), np.asarray(f["labels"])
    except DataFileError:
        raise
    except ValueError as exc:  # object arrays need pickle, which absint never enables
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataFileError(f"{path}: holds object arrays; absint reads only numeric arrays "
                                "(it never unpickles data files)") from None
        raise DataFileError(f"{path}: cannot read the .npz data ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise DataFileError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def _fit_shape(path: Path, images: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    per_image = int(np.prod(input_shape))
    have = int(np.prod(images.shape[1:]))
    if have != per_image:
        raise DataFileError(f"{path}: images have shape {tuple(images.shape[1:])} ({have} values each) but the "
                            f"network expects {tuple(input_shape)} ({per_image} values)")
    return images.reshape(len(images), *input_shape)


def _check_labels(path: Path, raw: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    if raw.ndim != 1 or len(raw) != n:
        raise DataFileError(f"{path}: expected one label per image ({n}), got labels of shape {tuple(raw.shape)}")
    if raw.dtype.kind not in "iub":
        if raw.dtype.kind != "f" or not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise DataFileError(f"{path}: labels must be whole numbers (dtype {raw.dtype})")
    labels = raw.astype(np.int64)
    if n and labels.min() < 0:
        raise DataFileError(f"{path}: labels must be ≥ 0 (found {labels.min()})")
    return labels


def load_images(path: str | Path, input_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images [N, *input_shape] float64 in [0, 1], labels [N] int64)`` from ``path``."""
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such data file")
    if path.is_dir():
        raise DataFileError(f"{path}: is a folder, not a data file")
    if path.suffix == ".npz":
        raw_images, raw_labels = _npz_arrays(path)
        if raw_images.dtype.kind not in "fiub" or raw_images.ndim < 2:
            raise DataFileError(f"{path}: 'images' must be a numeric array [N, ...], got dtype {raw_images.dtype} "
                                f"shape {tuple(raw_images.shape)}")
        images = raw_images.astype(np.float64)
        if input_shape is not None:
            images = _fit_shape(path, images, tuple(input_shape))
    elif path.suffix == ".csv":
        try:
            raw = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataFileError(f"{path}: not an ERAN-style CSV of numbers (label, pixels...): {exc}") from None
        if raw.shape[1] < 2:
            raise DataFileError(f"{path}: rows need a label and pixel values")
        raw_labels = raw[:, 0]
        pixels = raw[:, 1:] / 255.0
        if input_shape is not None and len(input_shape) == 3:
            c, h, w = input_shape
            if pixels.shape[1] != c * h * w:
                raise DataFileError(f"{path}: rows have {pixels.shape[1]} values, network expects {c * h * w}")
            images = pixels.reshape(len(pixels), h, w, c).transpose(0, 3, 1, 2)  # HWC -> CHW
        else:
            images = pixels if input_shape is None else _fit_shape(path, pixels, tuple(input_shape))
    else:
        raise DataFileError(f"{path}: unsupported data format {path.suffix!r} (use .npz or ERAN .csv)")
    labels = _check_labels(path, np.asarray(raw_labels), len(images))
    if len(images) == 0:
        raise DataFileError(f"{path}: holds no images")
    if not np.all(np.isfinite(images)):
        raise DataFileError(f"{path}: pixel values must be finite (found NaN or inf)")
    if images.min() < 0 or images.max() > 1:
        raise DataFileError(f"{path}: pixel values must lie in [0, 1] (found [{images.min()}, {images.max()}])")
    return images, labels
