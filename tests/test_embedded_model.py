"""The embedded default model (model/embedded/digits.safetensors): it loads and says what it is."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import EMBEDDED_CHECKPOINT, CheckpointError, load_checkpoint, read_checkpoint, read_config
from model.checkpoint import replace_config, weights_digest
from training.config import DataConfig
from training.data import load_data, split_data
from training.evaluate import make_referee
from training.presets import DIGIT_WORDS
from training.quality import to_levels


def test_embedded_checkpoint_describes_itself() -> None:
    assert EMBEDDED_CHECKPOINT.is_file() and EMBEDDED_CHECKPOINT.stat().st_size < 20 * 2**20
    cfg, _ = read_checkpoint(EMBEDDED_CHECKPOINT)
    assert (cfg.image_size, cfg.channels, cfg.num_classes, cfg.data_levels) == (8, 1, 10, 17)
    assert cfg.class_names == tuple(str(i) for i in range(10))
    prov = cfg.provenance
    assert prov["data"]["dataset"] == "digits" and prov["data"]["holdout"] == 0.2 and prov["data"]["split_seed"] == 0
    assert prov["command"].startswith("ddpm train") and prov["steps"] > 0 and prov["date"] and prov["git_commit"]
    assert cfg.sampling.sampler == "dpmpp_2m" and cfg.sampling.steps <= 25


def test_embedded_model_draws_the_digit_it_is_asked_for() -> None:
    """A quick version of `ddpm eval`'s accuracy column, at the model's defaults."""
    model = load_checkpoint(None, device="cpu")
    labels = [i % 10 for i in range(50)]
    images = model.sample(50, seed=123, label=labels)
    data = load_data(DataConfig())
    train, held = split_data(data, DataConfig())
    referee = make_referee(data, train, held)
    verdict = referee.judge_samples(to_levels(images, 17), np.array(labels))
    assert verdict.accuracy is not None and verdict.accuracy >= 0.9


def test_embedded_checkpoint_names_its_classes_in_words_with_its_weights_unchanged() -> None:
    """The aliases were added to the header alone: the recorded digest of the original tensor
    bytes still matches the file."""
    cfg = read_config(EMBEDDED_CHECKPOINT)
    assert cfg.class_aliases == {str(k): (word,) for k, word in enumerate(DIGIT_WORDS)}
    change = cfg.provenance["metadata_changes"][-1]
    assert "class_aliases" in change["added"] and change["weights_sha256"] == weights_digest(EMBEDDED_CHECKPOINT)


def test_replace_config_rewrites_the_header_only(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = tmp_path / "copy.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes())
    before = load_file(str(path))
    config = dataclasses.replace(read_config(path), name="renamed", class_aliases={"3": ("three",)})
    replace_config(path, config)
    after = load_file(str(path))
    assert read_config(path) == config and set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    wider = dataclasses.replace(config, unet=dataclasses.replace(config.unet, base_channels=32))
    with pytest.raises(CheckpointError, match=r"copy\.safetensors: weights do not match the config's network"):
        replace_config(path, wider)
    assert read_config(path) == config  # untouched by the refused rewrite
