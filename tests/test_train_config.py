"""Run configs: presets, files, --key=value overrides, and the errors for bad ones."""

import json
from pathlib import Path

import pytest

from model.config import ConfigError
from training.config import DataShape, resolve_model
from training.presets import PRESETS
from training.sources import apply_overrides, load_run_config, parse_overrides, parse_value

from .train_utils import ddpm

DIGITS = DataShape(image_size=8, channels=1, levels=17, class_names=tuple("0123456789"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name: str) -> None:
    run = load_run_config(name)
    assert run.model_name().startswith("ddpm-")


def test_dotted_overrides_reach_every_section() -> None:
    run = load_run_config("digits", [
        "--model.unet.base_channels=64", "--train.lr=2e-4", "--model.unet.channel_mult=1,2", "--ema.decay", "0.99",
        "--data.hflip=true", "--log.every=7", "--model.sampling.guidance=1.5", "--model.provenance.note=hello",
    ])
    assert run.model["unet"]["base_channels"] == 64 and list(run.model["unet"]["channel_mult"]) == [1, 2]
    assert run.train.lr == 2e-4 and run.ema.decay == 0.99 and run.data.hflip is True and run.log.every == 7
    model = resolve_model(run.model, DIGITS, {"data": "digits"})
    assert model.unet.channel_mult == (1, 2) and model.sampling.guidance == 1.5
    assert model.provenance == {"note": "hello", "data": "digits"}


def test_values_parse_like_json_with_friendly_extras() -> None:
    assert parse_value("2e-4") == 2e-4 and parse_value("true") is True and parse_value("None") is None
    assert parse_value("[1, 2]") == [1, 2] and parse_value("1,2,2") == [1, 2, 2] and parse_value("cosine") == "cosine"
    assert parse_overrides(["--train.lr=1", "--train.steps", "5"]) == [("train.lr", 1), ("train.steps", 5)]


def test_json_and_toml_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"train": {"steps": 7}, "model": {"name": "x"}}))
    (tmp_path / "b.toml").write_text('[train]\nsteps = 9\nlr = 1e-3\n[model.unet]\nbase_channels = 16\n')
    assert load_run_config(str(tmp_path / "a.json")).train.steps == 7
    run = load_run_config(str(tmp_path / "b.toml"), ["--train.steps=11"])
    assert run.train.steps == 11 and run.train.lr == 1e-3 and run.model["unet"]["base_channels"] == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.lrr=1"], r"unknown key train\.lrr; allowed: train\.steps, .*train\.lr,"),
        (["--trian.lr=1"], r"unknown section 'trian'; allowed: model, data, train, ema, log"),
        (["--model.unet.widht=3"], r"unknown key model\.unet\.widht; allowed: model\.unet\.image_size"),
        (["--train.lr=abc"], r"^train\.lr: Input should be a valid number \(got 'abc'\)$"),
        (["--train.steps=1.5"], r"^train\.steps: Input should be a valid integer \(got 1\.5\)$"),
        (["--train.steps=true"], r"^train\.steps: Input should be a valid integer \(got True\)$"),
        (["--train.steps=\"4\""], r"^train\.steps: Input should be a valid integer \(got '4'\)$"),
        (["--train.lr=NaN"], r"^train\.lr: Input should be a finite number"),
        (["--model.diffusion.num_timesteps=1000.5"],
         r"^model\.diffusion\.num_timesteps: Input should be a valid integer"),
        (["--model.diffusion.num_timesteps=10000000"],
         r"model\.diffusion\.num_timesteps: .*less than or equal to 10000"),
        (["--model.unet.base_channels=8.0"],
         r"^model\.unet\.base_channels: Input should be a valid integer \(got 8\.0\)$"),
        (["--model.unet.channel_mult=1,x"], r"^model\.unet\.channel_mult\[1\]: Input should be a valid integer"),
        (["--train.lr_schedule=step"], r"train\.lr_schedule: Input should be 'constant' or 'cosine' \(got 'step'\)"),
        (["--train.precision=fp8"],
         r"train\.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16' \(got 'fp8'\)"),
        (["--data.dataset=mnist"], r"data\.dataset: Input should be 'digits', 'folder', 'npz' or 'cifar10'"),
        (["--data.dataset=npz"], r"^data\.path: required for data\.dataset='npz'$"),
        (["--ema.decay=1.5"], r"^ema\.decay: Input should be less than 1 \(got 1\.5\)$"),
        (["--model.diffusion.schedule=sqrt"],
         r"^model\.diffusion\.schedule: Input should be 'linear' or 'cosine' \(got 'sqrt'\)$"),
        (["--train.lr"], r"--train\.lr needs a value"),
        (["--train=3"], r"an override names a section and a key"),
        (["--train.lr.x=3"], r"train\.lr is a value, not a section"),
        (["--model.unet=3"], r"model\.unet is a section"),
        (["stray"], r"unexpected argument 'stray'"),
    ],
)
def test_bad_values_and_keys_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config("tiny", overrides)


def test_bad_files_are_named(tmp_path: Path) -> None:
    message = r"nope\.json: neither a preset \(digits, tiny, cifar10\) nor an existing file"
    with pytest.raises(ConfigError, match=message):
        load_run_config(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        load_run_config(str(tmp_path / "bad.json"))
    (tmp_path / "bad.toml").write_text("train = [")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_run_config(str(tmp_path / "bad.toml"))
    (tmp_path / "sections.json").write_text(json.dumps({"optim": {}}))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) optim; allowed: model, data, train, ema, log"):
        load_run_config(str(tmp_path / "sections.json"))


def test_the_data_decides_sizes_and_refuses_contradictions() -> None:
    model = resolve_model(load_run_config("tiny").model, DIGITS, {})
    assert (model.image_size, model.channels, model.num_classes, model.data_levels) == (8, 1, 10, 17)
    assert model.class_names == tuple("0123456789")
    raw = apply_overrides({"model": {"unet": {"base_channels": 16}}}, [("model.unet.image_size", 16)])["model"]
    with pytest.raises(ConfigError, match=r"model\.unet\.image_size=16 disagrees with the data set, which has 8"):
        resolve_model(raw, DIGITS, {})
    with pytest.raises(ConfigError, match=r"model\.class_names=\['a'\] disagrees with the data set"):
        resolve_model({"class_names": ["a"]}, DIGITS, {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train.lr=abc"], "ddpm train: error: train.lr: Input should be a valid number (got 'abc')\n"),
        (["--train.lrr=1"], "ddpm train: error: --train.lrr: unknown key train.lrr; allowed: train.steps"),
        (["--data.dataset=npz", "--data.path=/no/such.npz"], "data.path='/no/such.npz': no such .npz file"),
        (["--data.dataset=folder", "--data.path=/no/such/dir"], "data.path='/no/such/dir': no such folder"),
        (["--data.dataset=cifar10", "--data.path=/no/such/dir"], "missing CIFAR-10 batch file(s) data_batch_1"),
        (["--model.unet.norm_groups=5"], "model.unet.norm_groups: 5 must divide every level's width (16, 32)"),
    ],
)
def test_ddpm_train_exits_2_with_the_message(args: list[str], message: str, tmp_path: Path) -> None:
    code, err = ddpm("train", "--config", "tiny", "--run-dir", str(tmp_path / "run"), *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_resume_errors(tmp_path: Path) -> None:
    code, err = ddpm("train", "--resume")
    assert code == 2 and "--resume needs --run-dir" in err
    code, err = ddpm("train", "--resume", "--run-dir", str(tmp_path))
    assert code == 2 and "no config.json; nothing to resume" in err
