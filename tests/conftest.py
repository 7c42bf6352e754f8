"""Shared fixtures: tiny models that make every test fast on two CPU cores."""

from __future__ import annotations

import dataclasses
import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. The tests run a
# server thread, subprocesses and the test itself on two cores; spinning threads then steal
# the cores their own team is waiting for, and a 2 ms network call can take 300 ms.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from model import DiffusionConfig, ModelConfig, SamplingConfig, UNet, UNetConfig, save_checkpoint

from .browser import AUTH, chromium

# The run's last lines name each skipped suite and the command that enables it (tests/skipsummary.py).
from .skipsummary import pytest_terminal_summary  # noqa: F401

TINY_UNET = UNetConfig(
    image_size=8,
    in_channels=1,
    out_channels=1,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    norm_groups=4,
    dropout=0.0,
    num_classes=10,
)


def tiny_config(**unet_overrides: object) -> ModelConfig:
    unet = UNetConfig(**{**TINY_UNET.__dict__, **unet_overrides})
    return ModelConfig(
        name="tiny",
        unet=unet,
        diffusion=DiffusionConfig(num_timesteps=100),
        sampling=SamplingConfig(sampler="ddim", steps=10),
        class_names=tuple(str(i) for i in range(unet.num_classes)) if unet.num_classes else None,
        provenance={"purpose": "tests"},
    )


def randomized_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net whose zero-initialised layers are randomised too, so every path shows in the output."""
    torch.manual_seed(seed)
    unet = UNet(config)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.05)
    return unet


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, randomized_unet(config.unet), config)
    return path


@pytest.fixture(scope="session")
def long_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network with T = 10000 (the largest allowed): a request of that many steps runs
    for seconds, long enough to drain, reload, cancel or kill a server in the middle of it."""
    config = dataclasses.replace(tiny_config(), diffusion=DiffusionConfig(num_timesteps=10_000))
    path = tmp_path_factory.mktemp("long") / "long.safetensors"
    save_checkpoint(path, randomized_unet(config.unet), config)
    return path


@pytest.fixture(scope="session")
def tiny_uncond_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(num_classes=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-uncond.safetensors"
    save_checkpoint(path, randomized_unet(config.unet, seed=1), config)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for a module's tests (the page tests; tests/test_browser.py has its own)."""
    with chromium(tmp_path_factory.mktemp("chromium-profile"), tmp_path_factory.mktemp("downloads")) as driver:
        yield driver


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    """The module's server, with the page's API key."""
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        yield client

