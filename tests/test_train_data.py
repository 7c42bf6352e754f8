"""Data sets, the held-out split, the data order and each step's random draws."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import DataConfig
from training.data import (
    BatchOrder,
    DataError,
    holdout_split,
    load_cifar10,
    load_data,
    load_folder,
    load_npz,
    split_data,
    to_model_range,
)
from training.step import draw_step, prepare_batch


def test_digits_are_8x8_17_levels_with_labels() -> None:
    data = load_digits_once()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.uint8
    assert data.levels == 17 and int(data.images.max()) == 16 and int(data.images.min()) == 0
    assert data.labels is not None and sorted(set(data.labels.tolist())) == list(range(10))
    x = to_model_range(data.images, data.levels)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert DataConfig().flips is False and DataConfig(dataset="npz", path="x").flips is True


_DIGITS = None


def load_digits_once():  # type: ignore[no-untyped-def]
    global _DIGITS
    if _DIGITS is None:
        _DIGITS = load_data(DataConfig())
    return _DIGITS


def test_holdout_split_is_fixed_stratified_and_disjoint() -> None:
    data = load_digits_once()
    train, held = split_data(data, DataConfig())
    again_train, again_held = split_data(data, DataConfig())
    np.testing.assert_array_equal(held, again_held)
    np.testing.assert_array_equal(train, again_train)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == 1797
    labels = data.labels.numpy()
    for c in range(10):  # every class gives about 20% of itself
        share = (labels[held] == c).sum() / (labels == c).sum()
        assert abs(share - 0.2) < 0.01
    _, other_held = split_data(data, DataConfig(split_seed=1))
    assert not np.array_equal(held, other_held)
    # Pinned: the embedded model's held-out set must never move under it.
    assert held[:8].tolist() == [5, 9, 12, 14, 16, 17, 19, 23] and int(held.sum()) == 324981
    np.testing.assert_array_equal(holdout_split(labels, len(labels), 0.2, 0)[1], held)


def test_npz_layouts_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    labels, names = np.array([0, 1, 2, 0, 1, 2]), np.array(["a", "b", "c"])
    np.savez(tmp_path / "a.npz", images=nhwc, labels=labels, class_names=names)
    data = load_npz(tmp_path / "a.npz")
    assert data.images.shape == (6, 3, 4, 4) and data.levels == 256 and data.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(data.images.numpy(), nhwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "b.npz", x=rng.integers(0, 17, (5, 8, 8)).astype(np.uint8), levels=17)
    data = load_npz(tmp_path / "b.npz")
    assert data.images.shape == (5, 1, 8, 8) and data.levels == 17 and data.labels is None
    np.savez(tmp_path / "c.npz", images=rng.random((2, 4, 4)))
    with pytest.raises(DataError, match=r"c\.npz: 'images' must hold integer intensity levels"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", pictures=nhwc)
    with pytest.raises(DataError, match=r"d\.npz: no 'images' \(or 'x'\) array; it has pictures"):
        load_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="without pickled objects"):
        load_npz(tmp_path / "e.npz")


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    for name, value in (("cat", 10), ("dog", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 6, 3), value + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_folder(tmp_path, None, None)
    assert data.images.shape == (6, 3, 6, 6) and data.class_names == ("cat", "dog")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(data.images[4, 0, 0, 0]) == 201
    small = load_folder(tmp_path, 4, 1)
    assert small.images.shape == (6, 1, 4, 4)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png: size 5x5 differs"):
        load_folder(tmp_path, None, None)
    with pytest.raises(DataError, match="no images"):
        load_folder(_empty(tmp_path), None, None)


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _fake_cifar(root: Path, per_batch: int = 4) -> None:
    """Batch files shaped like the real ones: protocol-2 pickles of dicts with bytes keys."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)], b"batch_label": b"x"}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] + [b"c"] * 9}, protocol=2))


def test_cifar10_batches_are_read_with_a_restricted_unpickler(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    data = load_cifar10(tmp_path)
    assert data.images.shape == (24, 3, 32, 32) and data.class_names[0] == "airplane"
    train, held = split_data(data, DataConfig(dataset="cifar10", path=str(tmp_path)))
    assert held.tolist() == list(range(20, 24)) and len(train) == 20  # test_batch is the held-out set


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


def test_cifar10_refuses_pickles_that_call_anything_else(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    message = r"data_batch_3: not a CIFAR-10 python batch file: refusing global __builtin__\.print"
    with pytest.raises(DataError, match=message):
        load_cifar10(tmp_path)


def test_batch_order_is_a_function_of_seed_and_step() -> None:
    order = BatchOrder(n=10, batch_size=4, seed=3)
    batches = [order.global_batch(s) for s in range(5)]
    # Epochs of a permutation: the first 10 positions are each index once.
    assert sorted(torch.cat(batches)[:10].tolist()) == list(range(10))
    fresh = BatchOrder(n=10, batch_size=4, seed=3)
    assert torch.equal(fresh.global_batch(4), batches[4])  # no history needed: resume-safe
    assert not torch.equal(BatchOrder(n=10, batch_size=4, seed=4).global_batch(0), batches[0])


def test_step_draws_shard_to_the_global_batch() -> None:
    full = draw_step(0, 7, 8, (1, 8, 8), 1000, flips=True, label_dropout=0.5)
    halves = [full.shard(r, 2) for r in range(2)]
    assert torch.equal(torch.cat([h.noise for h in halves]), full.noise)
    assert torch.equal(torch.cat([h.t for h in halves]), full.t)
    again = draw_step(0, 7, 8, (1, 8, 8), 1000, flips=True, label_dropout=0.5)
    assert torch.equal(again.noise, full.noise) and torch.equal(again.drop_label, full.drop_label)
    no_flips = draw_step(0, 7, 8, (1, 8, 8), 1000, flips=False, label_dropout=0.0)
    assert not no_flips.flip.any() and not no_flips.drop_label.any()
    x0 = torch.arange(8 * 64, dtype=torch.float32).reshape(8, 1, 8, 8)
    labels = torch.arange(8)
    x, y = prepare_batch(x0, labels, full, null_label=10)
    assert torch.equal(y, torch.where(full.drop_label, torch.tensor(10), labels))
    assert torch.equal(x[full.flip], x0[full.flip].flip(-1)) and torch.equal(x[~full.flip], x0[~full.flip])
