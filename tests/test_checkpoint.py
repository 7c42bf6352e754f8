import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from model.checkpoint import CONFIG_KEY

from .conftest import randomized_unet, tiny_config


def test_round_trip_keeps_weights_config_and_samples(tmp_path: Path) -> None:
    config = tiny_config()
    net = randomized_unet(config.unet, seed=5)
    path = save_checkpoint(tmp_path / "a.safetensors", net, config)
    loaded_config, tensors = read_checkpoint(path)
    assert loaded_config == config
    for k, v in net.state_dict().items():
        torch.testing.assert_close(tensors[k], v, atol=0, rtol=0)
    model = load_checkpoint(path, device="cpu")
    assert model.config.class_names == tuple("0123456789")
    assert model.config.provenance == {"purpose": "tests"}
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, torch.tensor([0, 1])), net.eval()(x, t, torch.tensor([0, 1])))
    # Sampling twice from the file gives the same image.
    again = load_checkpoint(path, device="cpu")
    np.testing.assert_array_equal(model.sample(1, seed=4), again.sample(1, seed=4))


def test_the_file_is_plain_safetensors(tmp_path: Path) -> None:
    """An 8-byte header length, a JSON header with our config in __metadata__, raw tensor bytes."""
    path = save_checkpoint(tmp_path / "a.safetensors", randomized_unet(tiny_config().unet), tiny_config())
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a server running as another user
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    config = json.loads(header["__metadata__"][CONFIG_KEY])
    assert config["unet"]["image_size"] == 8 and config["diffusion"]["num_timesteps"] == 100
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors file"):
        load_checkpoint(bad)
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(bad)


def test_pickle_is_never_loaded(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    torch.save({"x": torch.zeros(1)}, bad)  # a pickle under a safetensors name
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(bad)


def test_file_without_config(tmp_path: Path) -> None:
    bad = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(CheckpointError, match=f"bare.safetensors: no '{CONFIG_KEY}'"):
        load_checkpoint(bad)


def test_weights_that_do_not_match_the_config(tmp_path: Path) -> None:
    config = tiny_config()
    state = randomized_unet(config.unet).state_dict()
    wider = tiny_config(base_channels=32)
    path = save_checkpoint(tmp_path / "mismatch.safetensors", state, wider)
    with pytest.raises(CheckpointError, match=r"mismatch\.safetensors: weights do not match .* shape mismatch"):
        load_checkpoint(path)
    del state["conv_out.bias"]
    path = save_checkpoint(tmp_path / "missing.safetensors", state, config)
    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\), e\.g\. conv_out\.bias"):
        load_checkpoint(path)


def test_bad_config_in_metadata(tmp_path: Path) -> None:
    bad = tmp_path / "badcfg.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={CONFIG_KEY: json.dumps({"unet": {"depth": 3}})})
    with pytest.raises(CheckpointError, match=r"badcfg\.safetensors: invalid config .*unet\.depth"):
        load_checkpoint(bad)


def test_interrupted_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", randomized_unet(config.unet, seed=1), config)
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr("model.checkpoint.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, randomized_unet(config.unet, seed=2), config)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temp file left behind
