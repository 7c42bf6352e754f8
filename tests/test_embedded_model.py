"""The embedded default model (model/embedded/digits.safetensors): it loads and says what it is."""

import numpy as np

from model import EMBEDDED_CHECKPOINT, load_checkpoint, read_checkpoint
from training.config import DataConfig
from training.data import load_data, split_data
from training.evaluate import make_referee
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
