import dataclasses
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model import (
    CheckpointError,
    ConfigError,
    ModelConfig,
    load_checkpoint,
    read_checkpoint,
    read_config,
    save_checkpoint,
)
from model.checkpoint import CONFIG_KEY, expected_shapes

from .conftest import randomized_unet, tiny_config
from .train_utils import ddpm, subprocess_env


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


# --- what a corrupt or hostile file gets (issue 11, items 6 and 8) ------------------------------


def _with_config(tmp_path: Path, name: str, source: Path, edit: dict[str, dict[str, object]]) -> Path:
    """A copy of ``source`` whose metadata config has the ``edit`` sections' keys replaced."""
    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        config = json.loads((f.metadata() or {})[CONFIG_KEY])
    for section, values in edit.items():
        config[section].update(values)
    path = tmp_path / name
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(config), "format": "pt"})
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"unet": {"image_size": 8.0}}, r"unet\.image_size: Input should be a valid integer \(got 8\.0\)"),
        ({"unet": {"image_size": "8"}}, r"unet\.image_size: Input should be a valid integer \(got '8'\)"),
        ({"diffusion": {"num_timesteps": 1000.5}}, r"diffusion\.num_timesteps: Input should be a valid integer"),
        ({"diffusion": {"num_timesteps": 10**7}}, r"diffusion\.num_timesteps: Input should be less than or equal "
                                                  r"to 10000 \(got 10000000\)"),
        ({"unet": {"base_channels": 10**6}}, r"unet\.base_channels: Input should be less than or equal to 1024"),
        ({"diffusion": {"beta_end": float("nan")}}, r"diffusion\.beta_end: Input should be a finite number"),
    ],
)
def test_bad_metadata_is_refused_in_one_line_naming_file_and_key(
    tmp_path: Path, tiny_checkpoint: Path, edit: dict[str, dict[str, object]], message: str
) -> None:
    path = _with_config(tmp_path, "bad.safetensors", tiny_checkpoint, edit)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: invalid config in metadata: " + message) as info:
        read_config(path)
    assert "\n" not in str(info.value)


def test_a_small_file_claiming_a_huge_network_is_refused_before_allocating(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """The header says base_channels 1024 (a network of several GB); the file holds the tiny
    one. The shape check must refuse it from the header: memory must not grow by the network."""
    path = _with_config(tmp_path, "huge.safetensors", tiny_checkpoint, {"unet": {"base_channels": 1024}})
    declared = sum(math.prod(s) for s in expected_shapes(ModelConfig.from_json(
        json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])["__metadata__"][CONFIG_KEY]
    )).values()) * 4
    assert declared > 1e9  # the claim is worth refusing early
    script = (
        "import resource, sys\n"
        "from model import CheckpointError, load_checkpoint\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    load_checkpoint({str(path)!r}, device='cpu')\n"
        "except CheckpointError as exc:\n"
        "    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)
    message, grown = proc.stdout.strip().splitlines()
    assert "huge.safetensors: weights do not match the config's network" in message and "shape mismatch" in message
    assert int(grown) < declared / 10, f"memory grew by {int(grown) / 1e6:.0f} MB for a refused file"


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    config = tiny_config()
    state = randomized_unet(config.unet).state_dict()
    for bad in (float("nan"), float("inf")):
        state["down.0.blocks.0.conv1.weight"][0, 0, 0, 0] = bad
        path = save_checkpoint(tmp_path / "nan.safetensors", state, config)
        with pytest.raises(CheckpointError, match=r"nan\.safetensors: tensor down\.0\.blocks\.0\.conv1\.weight "
                                                  r"holds non-finite values"):
            load_checkpoint(path)


def test_a_directory_is_named_as_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)
    code, err = ddpm("sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and "is a directory" in err and "Traceback" not in err


def test_ddpm_sample_on_a_missing_device_is_one_line(tmp_path: Path, tiny_checkpoint: Path) -> None:
    # cuda:99 is absent on a CPU host and on any real GPU host alike.
    for device, message in (("cuda:99", "--device='cuda:99'"), ("gpu", "--device='gpu' is not a device")):
        code, err = ddpm("sample", "--checkpoint", str(tiny_checkpoint), "--device", device, "--out",
                         str(tmp_path / "out"))
        assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_old_checkpoints_without_class_aliases_still_load(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with safe_open(str(tiny_checkpoint), framework="pt") as f:
        assert "class_aliases" not in json.loads((f.metadata() or {})[CONFIG_KEY])
    assert read_config(tiny_checkpoint).class_aliases == {}
    config = dataclasses.replace(tiny_config(), class_aliases={"7": ("seven",)})
    path = save_checkpoint(tmp_path / "aliases.safetensors", randomized_unet(config.unet), config)
    assert read_config(path).class_aliases == {"7": ("seven",)}


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"7": ("seven",), "1": ("seven",)}, r"class_aliases\.1: 'seven' already names class '7'"),
        ({"7": ("1",)}, r"class_aliases\.7: '1' already names class '1'"),
        ({"ten": ("10",)}, r"class_aliases\.ten: 'ten' is not one of the class names"),
        ({"7": (" ",)}, r"class_aliases\.7: an alias must not be blank"),
    ],
)
def test_class_aliases_are_unique_and_name_classes(aliases: dict[str, tuple[str, ...]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(tiny_config(), class_aliases=aliases)
