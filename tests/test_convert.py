"""Importing diffusers-format DDPM folders, with outputs that match diffusers'."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

from cli import main
from model import RowSpec, build_plan, load_checkpoint, save_checkpoint
from model.convert import PAPER_CIFAR10_LAYOUT, ConversionError, convert_diffusers, export_diffusers
from model.pipeline import EMBEDDED_CHECKPOINT

from .conftest import randomized_unet, tiny_config

# The paper's CIFAR-10 layout (google/ddpm-cifar10-32) at a quarter of the width.
PAPER_LAYOUT = {**PAPER_CIFAR10_LAYOUT, "sample_size": 16, "block_out_channels": (32, 64, 64, 64),
                "norm_num_groups": 8}


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, UNet2DModel]:
    torch.manual_seed(0)
    unet = UNet2DModel(**PAPER_LAYOUT).eval()
    root = tmp_path_factory.mktemp("diffusers")
    unet.save_pretrained(root / "unet")
    DDPMScheduler(variance_type="fixed_large", clip_sample=True).save_pretrained(root / "scheduler")
    return root, unet


def test_converted_network_matches_diffusers(diffusers_folder: tuple[Path, UNet2DModel], tmp_path: Path) -> None:
    src, ref = diffusers_folder
    config = convert_diffusers(src, tmp_path / "out.safetensors")
    assert config.unet.attention_resolutions == (8,) and config.unet.attention_head_dim is None
    assert config.diffusion.variance == "fixed_large" and config.diffusion.clip_denoised
    model = load_checkpoint(tmp_path / "out.safetensors", device="cpu")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 17, 500, 999])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = model.unet(x, t)
    assert expected.abs().max() > 0.1  # a real signal, not zeros
    assert (got - expected).abs().max().item() <= 1e-4


def test_old_attention_names_are_accepted(diffusers_folder: tuple[Path, UNet2DModel], tmp_path: Path) -> None:
    src, ref = diffusers_folder
    old = tmp_path / "old"
    (old / "unet").mkdir(parents=True)
    (old / "unet" / "config.json").write_text((src / "unet" / "config.json").read_text())
    (old / "scheduler").mkdir()
    (old / "scheduler" / "scheduler_config.json").write_text(
        (src / "scheduler" / "scheduler_config.json").read_text())
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in ref.state_dict().items():
        for new, legacy in renames.items():
            key = key.replace(f".{new}.", f".{legacy}.")
        state[key] = value.contiguous()
    save_file(state, str(old / "unet" / "diffusion_pytorch_model.safetensors"))
    convert_diffusers(old, tmp_path / "old.safetensors")
    model = load_checkpoint(tmp_path / "old.safetensors", device="cpu")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 300])
    with torch.no_grad():
        assert (model.unet(x, t) - ref(x, t).sample).abs().max().item() <= 1e-4


def test_whole_ddim_run_matches_ddim_pipeline(diffusers_folder: tuple[Path, UNet2DModel], tmp_path: Path) -> None:
    """20 DDIM steps from the same x_T: diffusers' DDIMPipeline against our batched sampler."""
    src, ref = diffusers_folder
    convert_diffusers(src, tmp_path / "m.safetensors")
    model = load_checkpoint(tmp_path / "m.safetensors", device="cpu")
    scheduler = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(src / "scheduler").config)
    pipe = DDIMPipeline(unet=ref, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    plan = build_plan(model.schedule, "ddim", 20, spacing="leading")  # diffusers' default spacing
    for seed in (0, 1):
        expected = pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), eta=0.0,
                        num_inference_steps=20, output_type="np").images[0]
        batch = model.row_batch(1)
        batch.add(RowSpec(plan=plan, seed=seed))  # x_T = randn(C, H, W) from the same seed
        (row,) = [r for _ in range(20) for r in batch.step()]
        np.testing.assert_array_equal(plan.timesteps.numpy(), pipe.scheduler.timesteps.numpy())
        assert expected.std() > 0.05  # not saturated
        # Ours is rounded to uint8 (up to 0.5 of a level, 0.25 on average). Beyond that the runs
        # differ by float32 noise: diffusers' own result moves by 3e-4 (0.08 levels) when its
        # float32 alpha-bar table is swapped for the float64-exact one that we use.
        diff = np.abs(row.image.astype(np.float64) - expected * 255.0)
        assert diff.max() <= 1.0
        assert diff.mean() <= 0.3


def test_bin_weights_need_a_flag(diffusers_folder: tuple[Path, UNet2DModel], tmp_path: Path) -> None:
    src, ref = diffusers_folder
    folder = tmp_path / "bin"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text((src / "unet" / "config.json").read_text())
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        (src / "scheduler" / "scheduler_config.json").read_text())
    torch.save(ref.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"diffusion_pytorch_model\.bin: a pickle .* --allow-pickle"):
        convert_diffusers(folder, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    convert_diffusers(folder, tmp_path / "x.safetensors", allow_pickle=True)
    assert load_checkpoint(tmp_path / "x.safetensors", device="cpu").config.image_size == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"act_fn": "gelu"}, "act_fn='gelu' is not supported"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
         "CrossAttnDownBlock2D"),
        ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "do not mirror"),
    ],
)
def test_unsupported_networks_are_refused_by_name(
    diffusers_folder: tuple[Path, UNet2DModel], tmp_path: Path, change: dict, message: str
) -> None:
    src, _ = diffusers_folder
    folder = tmp_path / "f"
    (folder / "unet").mkdir(parents=True)
    cfg = json.loads((src / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**cfg, **change}))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (src / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        (src / "scheduler" / "scheduler_config.json").read_text())
    with pytest.raises(ConversionError, match=message):
        convert_diffusers(folder, tmp_path / "x.safetensors")


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not a directory"):
        convert_diffusers(tmp_path / "absent", tmp_path / "x.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        convert_diffusers(tmp_path / "empty", tmp_path / "x.safetensors")


def test_cli_convert_and_sample(diffusers_folder: tuple[Path, UNet2DModel], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = diffusers_folder
    out = tmp_path / "cifar.safetensors"
    assert main(["convert", str(src), str(out), "--name", "tiny-cifar"]) == 0
    assert "tiny-cifar" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(out), "--n", "3", "--steps", "4", "--sampler", "ddim",
                 "--seed", "5", "--out", str(tmp_path / "s")]) == 0
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["0000_seed5.png", "0001_seed6.png", "0002_seed7.png", "grid.png"]
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)]) == 2
    assert "nope.safetensors: no such checkpoint file" in capsys.readouterr().err


# Ours -> diffusers (model.convert.export_diffusers): the serving peer's network (bench/peer.py).

@pytest.mark.parametrize("overrides", [
    {},  # tests/conftest.py's tiny layout: class-conditional, one head, TensorFlow-style downsampling
    {"num_classes": None, "attention_head_dim": 8, "downsample_padding": 1, "time_flip_sin_to_cos": True,
     "time_freq_shift": 0.0, "channel_mult": (1, 2, 2), "num_res_blocks": 2, "attention_resolutions": (8, 2)},
])
def test_exported_network_matches_ours(overrides: dict, tmp_path: Path) -> None:
    config = tiny_config(**overrides)
    ours = randomized_unet(config.unet).eval()
    with torch.no_grad():
        ours.conv_out.weight.normal_(0.0, 1.0)  # outputs of order one, so a 1e-4 bound means something
    save_checkpoint(tmp_path / "m.safetensors", ours, config)
    folder = export_diffusers(tmp_path / "m.safetensors", tmp_path / "diffusers")
    theirs = UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 9, 50, 99])
    labels = torch.tensor([0, 3, 9, 10]) if config.unet.num_classes else None  # 10: our null label
    with torch.no_grad():
        expected = ours(x, t, labels)
        got = theirs(x, t, class_labels=labels).sample
    assert expected.std() > 0.1
    assert (got - expected).abs().max().item() <= 1e-4
    # Back again: the import reads the export as the same network.
    if config.unet.num_classes is None:
        back = convert_diffusers(folder, tmp_path / "back.safetensors")
        assert back.unet == config.unet
        with torch.no_grad():
            again = load_checkpoint(tmp_path / "back.safetensors", device="cpu", runtime="torch").unet(x, t)
        assert (again - expected).abs().max().item() <= 1e-4


def test_embedded_model_exports_exactly(tmp_path: Path) -> None:
    """The digits model as diffusers' UNet2DModel: every class and the null label, many timesteps."""
    folder = export_diffusers(EMBEDDED_CHECKPOINT, tmp_path)
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_cfg["num_class_embeds"] == 11 and unet_cfg["class_embed_type"] is None
    sched = DDIMScheduler.from_pretrained(folder / "scheduler")
    assert (sched.config.timestep_spacing, sched.config.clip_sample) == ("trailing", False)
    theirs = UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    ours = load_checkpoint(EMBEDDED_CHECKPOINT, device="cpu", runtime="torch").unet
    x = torch.randn(11, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0, 999, 11).long()
    labels = torch.arange(11)
    with torch.no_grad():
        diff = (theirs(x, t, class_labels=labels).sample - ours(x, t, labels)).abs().max().item()
    assert diff <= 1e-4
