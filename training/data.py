"""Data sets, the held-out split, and the order the trainer visits them in.

Every data set becomes an ``ImageData``: integer intensity levels (N, C, H, W) as uint8, the
number of levels, labels and class names when there are any. The network sees
x = 2 * level / (levels - 1) - 1, in [-1, 1] (the paper scales 8-bit data the same way, sec. 4).

The held-out split is defined here once (``holdout_split``) and used by both the trainer and
``ddpm eval``, so evaluation never judges on training data.
"""

from __future__ import annotations

import codecs
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.config import ConfigError

from .config import DataConfig, DataShape
from .extras import missing_sklearn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ConfigError):
    """Missing or malformed data; the message names the path and what was expected."""


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8, values 0..levels-1
    levels: int
    labels: torch.Tensor | None = None  # (N,) int64
    class_names: tuple[str, ...] | None = None
    # Indices that form the held-out set when the data set defines its own (CIFAR-10's test_batch).
    predefined_heldout: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> DataShape:
        return DataShape(image_size=int(self.images.shape[-1]), channels=int(self.images.shape[1]),
                         levels=self.levels, class_names=self.class_names if self.labels is not None else None)

    def unlabelled(self) -> ImageData:
        return ImageData(self.images, self.levels, None, None, self.predefined_heldout)


def to_model_range(levels_u8: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 levels 0..levels-1 to floats in [-1, 1]."""
    return levels_u8.float() * (2.0 / (levels - 1)) - 1.0


# --- the data sets -----------------------------------------------------------------------------


def load_digits() -> ImageData:
    """scikit-learn's bundled 1,797 8x8 digits: values 0..16 (17 levels), labels 0-9; nothing is downloaded."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise missing_sklearn("data.dataset='digits'") from None

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return ImageData(images, 17, labels, tuple(str(i) for i in range(10)))


def load_npz(path: Path) -> ImageData:
    """A .npz with ``images`` (or ``x``): integer (N, H, W), (N, H, W, C) or (N, C, H, W), C in {1, 3};
    optional ``labels`` (or ``y``), ``class_names`` and ``levels`` (default 256)."""
    if not path.is_file():
        raise DataError(f"data.path={str(path)!r}: no such .npz file")
    try:
        # allow_pickle=False: an object array inside the file is refused rather than unpickled.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path={str(path)!r}: not a readable .npz without pickled objects: {exc}") from exc
    key = next((k for k in ("images", "x") if k in arrays), None)
    if key is None:
        raise DataError(f"{path}: no 'images' (or 'x') array; it has {', '.join(arrays) or 'none'}")
    x = arrays[key]
    if not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must hold integer intensity levels (e.g. uint8), not {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
        raise DataError(f"{path}: '{key}' has shape {arrays[key].shape}; expected square images as "
                        "(N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3")
    levels = int(arrays["levels"]) if "levels" in arrays else 256
    if not 2 <= levels <= 256 or x.min() < 0 or x.max() >= levels:
        raise DataError(f"{path}: '{key}' values span {x.min()}..{x.max()}, outside 0..{levels - 1} (levels={levels})")
    labels, names = None, None
    label_key = next((k for k in ("labels", "y") if k in arrays), None)
    if label_key is not None:
        y = arrays[label_key].astype(np.int64).reshape(-1)
        if len(y) != len(x) or y.min() < 0:
            raise DataError(f"{path}: '{label_key}' must be one non-negative integer per image")
        count = int(y.max()) + 1
        given = arrays.get("class_names")
        names = tuple(str(n) for n in given) if given is not None else tuple(map(str, range(count)))
        if len(names) < count:
            raise DataError(f"{path}: class_names has {len(names)} entries but labels go up to {count - 1}")
        labels = torch.from_numpy(y)
    return ImageData(torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8))), levels, labels, names)


def _read_image(path: Path, mode: str, size: int | None) -> np.ndarray:
    with Image.open(path) as raw:
        im = raw.convert(mode)
    if size is not None and im.size != (size, size):
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_folder(path: Path, image_size: int | None, channels: int | None) -> ImageData:
    """Images in ``path``; when it has subfolders, each subfolder is a class (sorted by name)."""
    if not path.is_dir():
        raise DataError(f"data.path={str(path)!r}: no such folder")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(c.name, sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)) for c in classes]
    groups = [(name, files) for name, files in groups if files]
    if not groups:
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        groups = [("", files)]
    files = [f for _, fs in groups for f in fs]
    if not files:
        raise DataError(f"data.path={str(path)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its subfolders")
    if channels is None:
        with Image.open(files[0]) as first:
            channels = 1 if first.mode in ("1", "L", "LA", "I", "I;16") else 3
    mode = "L" if channels == 1 else "RGB"
    arrays: list[np.ndarray] = []
    for f in files:
        try:
            arr = _read_image(f, mode, image_size)
        except OSError as exc:
            raise DataError(f"{f}: not a readable image: {exc}") from exc
        if arr.shape[0] != arr.shape[1] or (arrays and arr.shape != arrays[0].shape):
            raise DataError(f"{f}: size {arr.shape[1]}x{arr.shape[0]} differs from {files[0].name}'s "
                            f"{arrays[0].shape[1] if arrays else '?'}x{arrays[0].shape[0] if arrays else '?'} "
                            "or is not square; set data.image_size to resize every image")
        arrays.append(arr)
    images = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    if len(groups) == 1 and groups[0][0] == "":
        return ImageData(images, 256)
    labels = torch.tensor([i for i, (_, fs) in enumerate(groups) for _ in fs], dtype=torch.long)
    return ImageData(images, 256, labels, tuple(name for name, _ in groups))


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's python batches, which are pickles of {b"data": uint8 array, b"labels": list}.

    Unpickling can run arbitrary code, so two guards: the files are only read from the directory
    the user named in data.path (never fetched), and ``find_class`` admits exactly the three numpy
    globals that rebuild an ndarray (plus ``_codecs.encode``, with which Python 3 writes bytes
    into protocol-2 pickles); anything else in the stream is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a CIFAR-10 batch file")


def read_cifar_batch(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = _CifarUnpickler(fh, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch file: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch file (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar10(path: Path) -> ImageData:
    """CIFAR-10's "python version": data_batch_1..5 for training, test_batch held out."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise DataError(f"data.path={str(path)!r}: missing CIFAR-10 batch file(s) {', '.join(missing)} "
                        "(expected the extracted cifar-10-batches-py directory)")
    xs, ys = [], []
    for n in names:
        batch = read_cifar_batch(path / n)
        data = np.asarray(batch.get("data"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path / n}: 'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch.get("labels"), dtype=np.int64))
    class_names = tuple(str(i) for i in range(10))
    if (path / "batches.meta").is_file():
        meta = read_cifar_batch(path / "batches.meta")
        found = meta.get("label_names", class_names)
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in found)
    n_test = len(ys[-1])
    total = sum(len(y) for y in ys)
    return ImageData(torch.from_numpy(np.concatenate(xs)), 256, torch.from_numpy(np.concatenate(ys)),
                     class_names, predefined_heldout=np.arange(total - n_test, total))


def load_data(config: DataConfig) -> ImageData:
    """The data set ``config`` names, with labels dropped when ``data.labels`` is false."""
    if config.dataset == "digits":
        data = load_digits()
    else:
        assert config.path is not None
        path = Path(config.path).expanduser()
        if config.dataset == "npz":
            data = load_npz(path)
        elif config.dataset == "folder":
            data = load_folder(path, config.image_size, config.channels)
        else:
            data = load_cifar10(path)
    if config.dataset != "folder" and (config.image_size is not None or config.channels is not None):
        raise DataError("data.image_size and data.channels apply to data.dataset='folder' only, "
                        f"not {config.dataset!r}")
    return data if config.labels else data.unlabelled()


# --- the held-out split ------------------------------------------------------------------------


def holdout_split(labels: np.ndarray | None, n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a fixed-seed split, stratified by label when there are labels.

    Each class gives round(fraction * its size) images to the held-out set, chosen by a
    permutation from ``seed`` alone, so the same data and seed always give the same split.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    held: list[np.ndarray] = []
    for idx in groups:
        k = math.floor(fraction * len(idx) + 0.5)
        held.append(rng.permutation(idx)[:k])
    heldout = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(n), heldout)
    return train.astype(np.int64), heldout.astype(np.int64)


def split_data(data: ImageData, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The split of ``data`` that every part of the project uses for this config."""
    if data.predefined_heldout is not None:
        heldout = np.asarray(data.predefined_heldout, dtype=np.int64)
        return np.setdiff1d(np.arange(len(data)), heldout), heldout
    labels = data.labels.numpy() if data.labels is not None else None
    return holdout_split(labels, len(data), config.holdout, config.split_seed)


# --- the order of the training data ------------------------------------------------------------


class BatchOrder:
    """Which examples each step trains on: epochs of a fresh permutation, cut into global batches.

    The permutation of epoch e comes from a generator seeded by (seed, e), so the order is a pure
    function of (seed, step): a resumed run sees exactly the batches it would have seen, and every
    process of a torchrun job agrees on the global batch without talking. Rank r of W takes rows
    [r * B/W, (r + 1) * B/W) of it, so the global batch does not depend on W.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise DataError("the training split is empty; lower data.holdout or add data")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            seed = np.random.SeedSequence([self.seed, epoch, 0xDA7A]).generate_state(1)[0]
            g = torch.Generator().manual_seed(int(seed))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def global_batch(self, step: int) -> torch.Tensor:
        """Positions (into the training split) of the global batch at ``step``."""
        start = step * self.batch_size
        out: list[int] = []
        while len(out) < self.batch_size:
            epoch, pos = divmod(start + len(out), self.n)
            take = min(self.n - pos, self.batch_size - len(out))
            out.extend(self.permutation(epoch)[pos : pos + take].tolist())
        return torch.tensor(out, dtype=torch.long)

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n
