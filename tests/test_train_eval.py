"""``ddpm eval``: the Frechet distance, the digits judge, and a smoke run of the whole report."""

import json
from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig
from training.data import load_data, split_data
from training.evaluate import make_referee
from training.quality import DigitsReferee, balanced_labels, balanced_subset, frechet_distance, to_levels

from .train_utils import ddpm, one_thread, train_tiny


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(a, a + s) for s in (0.1, 0.5, 1.0)]
    assert shifts == pytest.approx([8 * 0.01, 8 * 0.25, 8 * 1.0], rel=1e-4)  # ||mu1 - mu2||^2, same covariance
    # A change of spread counts too: N(0, 1) against N(0, 4) in d dims is d * (1 + 4 - 2 * 2) = d.
    x = rng.normal(size=(20000, 3))
    assert frechet_distance(x, 2 * x) == pytest.approx(3.0, rel=0.02)


@pytest.fixture(scope="module")
def referee() -> DigitsReferee:
    data = load_data(DataConfig())
    train, held = split_data(data, DataConfig())
    return make_referee(data, train, held)


def test_the_judge_is_accurate_on_held_out_real_digits(referee: DigitsReferee) -> None:
    real = referee.real_heldout()
    assert real.accuracy is not None and real.accuracy >= 0.95
    assert real.confident >= 0.8
    floor, spread = referee.floor(300)
    assert 0 < floor < 2.0 and spread < floor
    # Real training digits score at the floor; noise and washed-out digits score far above it.
    rng = np.random.default_rng(0)
    idx = balanced_subset(referee.train_y, 300, rng)
    x, y = referee.train_x[idx], referee.train_y[idx]
    assert referee.judge_samples(x, y).fd < 1.5 * floor
    noisy = np.clip(x + rng.integers(-3, 4, x.shape), 0, 16)
    assert referee.judge_samples(noisy, y).fd > 2 * floor
    assert referee.judge_samples(x // 2, y).fd > 3 * floor
    assert referee.judge_samples(x, (y + 1) % 10).accuracy < 0.1


def test_sampler_output_maps_back_onto_the_data_levels() -> None:
    u8 = np.array([0, 8, 127, 128, 255], dtype=np.uint8).reshape(5, 1, 1, 1)
    assert to_levels(u8, 17).ravel().tolist() == [0, 1, 8, 8, 16]
    assert balanced_labels(12, 10).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_ddpm_eval_quick_smoke(tmp_path: Path) -> None:
    train_tiny(tmp_path / "run", "--train.steps=2")
    out = tmp_path / "eval"
    with one_thread():
        code, err = ddpm("eval", "--checkpoint", str(tmp_path / "run" / "ema.safetensors"), "--quick",
                         "--out", str(out), "--samples", "20", "--bpd-images", "4", "--guidance", "0.5")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    rows = {(r["sampler"], r["steps"], r["guidance"]) for r in report["rows"]}
    # T = 100 for the tiny model: DDPM's 1000 steps become the whole chain of 100.
    assert {("ddpm", 100, 0.0), ("ddim", 50, 0.0), ("ddim", 10, 0.0), ("dpmpp_2m", 20, 0.0),
            ("dpmpp_2m", 10, 0.0), ("ddim", 10, 0.5)} <= rows
    assert report["bpd"]["unconditional"]["images"] == 4 and report["bpd"]["conditional"]["bpd"] > 0
    for row in report["rows"]:
        assert row["fd"] > 0 and row["floor"] > 0 and 0 <= row["accuracy"] <= 1 and (out / row["grid"]).is_file()
    table = (out / "report.md").read_text()
    assert "| sampler | steps | guidance | FD | floor | FD/floor | accuracy | confident |" in table
    assert "ddim (default)" in table


def test_ddpm_eval_errors_are_named(tmp_path: Path, tiny_checkpoint: Path) -> None:
    code, err = ddpm("eval", "--checkpoint", str(tmp_path / "none.safetensors"))
    assert code == 2 and "none.safetensors: no such checkpoint file" in err
    code, err = ddpm("eval", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path))
    assert code == 2 and "does not record the data set" in err
    code, err = ddpm("eval", "--checkpoint", str(tiny_checkpoint), "--rows", "euler:3")
    assert code == 2 and "--rows entry 'euler:3' must be SAMPLER:STEPS" in err
    code, err = ddpm("eval", "--checkpoint", str(tiny_checkpoint), "--device", "cuda:99")
    assert code == 2 and err.count("\n") == 1 and "--device='cuda:99'" in err
    code, err = ddpm("eval", "--checkpoint", str(tmp_path))
    assert code == 2 and "is a directory, not a checkpoint file" in err


def test_sampling_defaults_can_be_set_after_evaluation(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from model import read_checkpoint
    from training.defaults import main as set_defaults

    path = tmp_path / "m.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes())
    assert set_defaults([str(path), "--sampler", "dpmpp_2m", "--steps", "7", "--guidance", "0.5",
                         "--reason", "eval said so"]) == 0
    (before, old), (after, new) = read_checkpoint(tiny_checkpoint), read_checkpoint(path)
    assert (after.sampling.sampler, after.sampling.steps, after.sampling.guidance) == ("dpmpp_2m", 7, 0.5)
    assert after.provenance["sampling_changes"][0]["reason"] == "eval said so"
    assert after.unet == before.unet and all((old[k] == new[k]).all() for k in old)
    assert set_defaults([str(path), "--steps", "1000", "--reason", "x"]) == 2  # > T = 100


def test_gallery_writes_one_grid_per_label(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from training.gallery import write_gallery

    with one_thread():
        paths = write_gallery(str(tiny_checkpoint), tmp_path, per_label=2, device="cpu")
    assert sorted(p.name for p in paths) == sorted([f"label_{k}.png" for k in range(10)] + ["all_labels.png"])
