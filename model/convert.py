"""Import a diffusers-format DDPM folder (e.g. the paper's ``google/ddpm-cifar10-32``) as a checkpoint,
and export a checkpoint the other way (``export_diffusers``) for diffusers' pipelines.

The folder holds ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors`` and
``scheduler/scheduler_config.json`` (the same files at the folder's top level are accepted too).
Only what this project's U-Net can express is accepted; anything else is refused by name rather
than silently converted into a different network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError, build_unet, read_checkpoint, save_checkpoint
from .config import DiffusionConfig, ModelConfig, SamplingConfig, UNetConfig
from .validation import ConfigError, parse

# The paper's CIFAR-10 network as diffusers' UNet2DModel describes it (google/ddpm-cifar10-32's
# unet/config.json, 35.7M parameters): what the benchmark times and the parity tests shrink.
PAPER_CIFAR10_LAYOUT: dict[str, Any] = {
    "sample_size": 32,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "norm_eps": 1e-6,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
}

# diffusers' UNet2DModel options that must hold their default (or these values) for a faithful import.
_REQUIRED = {
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "resnet_time_scale_shift": "default",
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
    "class_embed_type": None,
    "add_attention": True,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "attn_norm_num_groups": None,
    "time_embedding_dim": None,
    "mid_block_type": "UNetMidBlock2D",
}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}
_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}

_RENAMES = [
    (r"^time_embedding\.linear_1\.", "time_embed.0."),
    (r"^time_embedding\.linear_2\.", "time_embed.2."),
    (r"^class_embedding\.", "class_embed."),
    (r"^conv_norm_out\.", "norm_out."),
    (r"^mid_block\.resnets\.0\.", "mid_block1."),
    (r"^mid_block\.resnets\.1\.", "mid_block2."),
    (r"^mid_block\.attentions\.0\.", "mid_attn."),
    (r"^down_blocks\.(\d+)\.resnets\.", r"down.\1.blocks."),
    (r"^down_blocks\.(\d+)\.attentions\.", r"down.\1.attns."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.resample."),
    (r"^up_blocks\.(\d+)\.resnets\.", r"up.\1.blocks."),
    (r"^up_blocks\.(\d+)\.attentions\.", r"up.\1.attns."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.", r"up.\1.resample."),
    (r"\.time_emb_proj\.", ".time_proj."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.(to_out\.0|proj_attn)\.", ".proj."),
]
_QKV = {"to_q": 0, "query": 0, "to_k": 1, "key": 1, "to_v": 2, "value": 2}


T = TypeVar("T")


class ConversionError(ValueError):
    """A diffusers folder that cannot be imported faithfully; the message names the file and key."""


def _find(src: Path, sub: str, name: str) -> Path | None:
    for candidate in (src / sub / name, src / name):
        if candidate.is_file():
            return candidate
    return None


def _read_json(path: Path | None, what: str, src: Path) -> dict[str, Any]:
    if path is None:
        raise ConversionError(f"{src}: no {what} (looked for {what} in the folder and its subfolder)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def unet_config_from_diffusers(cfg: dict[str, Any], where: Path | str = "unet/config.json") -> UNetConfig:
    for key, value in _REQUIRED.items():
        if cfg.get(key, value) != value:
            raise ConversionError(f"{where}: {key}={cfg[key]!r} is not supported (only {value!r})")
    boc = list(cfg.get("block_out_channels", (224, 448, 672, 896)))
    base = boc[0]
    if any(c % base for c in boc):
        raise ConversionError(f"{where}: block_out_channels={boc} are not multiples of the first")
    down = list(cfg.get("down_block_types", ()))
    up = list(cfg.get("up_block_types", ()))
    for kind in down + up:
        if kind not in _DOWN and kind not in _UP:
            raise ConversionError(f"{where}: block type {kind!r} is not supported "
                                  f"(only {', '.join([*_DOWN, *_UP])})")
    if len(down) != len(boc) or [_DOWN.get(k) for k in down] != [_UP.get(k) for k in reversed(up)]:
        raise ConversionError(f"{where}: up_block_types={up} do not mirror down_block_types={down}")
    size = cfg.get("sample_size") or 32
    if not isinstance(size, int):
        raise ConversionError(f"{where}: sample_size={size!r} must be one integer (square images)")
    # Values pass to the config as the file has them (no int() or float() that would turn a
    # 1000.5 into 1000): the strict config check refuses a wrong type, naming the key.
    return _build(UNetConfig, where, {
        "image_size": size,
        "in_channels": cfg.get("in_channels", 3),
        "out_channels": cfg.get("out_channels", 3),
        "base_channels": base,
        "channel_mult": tuple(c // base for c in boc),
        "num_res_blocks": cfg.get("layers_per_block", 2),
        "attention_resolutions": tuple(size // 2**i for i, k in enumerate(down) if _DOWN[k]),
        "attention_head_dim": cfg.get("attention_head_dim", 8),
        "dropout": cfg.get("dropout", 0.0),
        "norm_groups": cfg.get("norm_num_groups", 32),
        "norm_eps": cfg.get("norm_eps", 1e-5),
        "num_classes": cfg.get("num_class_embeds"),
        "downsample_padding": cfg.get("downsample_padding", 1),
        "time_flip_sin_to_cos": cfg.get("flip_sin_to_cos", True),
        "time_freq_shift": cfg.get("freq_shift", 0),
    })


def _build(cls: type[T], where: Path | str, values: dict[str, Any]) -> T:
    try:
        return parse(cls, values)
    except ConfigError as exc:
        raise ConversionError(f"{where}: {exc} (in this project's names)") from None


def diffusion_config_from_diffusers(
    cfg: dict[str, Any], where: Path | str = "scheduler_config.json"
) -> DiffusionConfig:
    def pick(key: str, table: dict[str, str], default: str) -> str:
        value = cfg.get(key, default)
        if value not in table:
            raise ConversionError(f"{where}: {key}={value!r} is not supported (only {', '.join(table)})")
        return table[value]

    if cfg.get("trained_betas") is not None:
        raise ConversionError(f"{where}: trained_betas are not supported")
    if cfg.get("thresholding", False):
        raise ConversionError(f"{where}: thresholding=true is not supported")
    if cfg.get("clip_sample", True) and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise ConversionError(f"{where}: clip_sample_range={cfg['clip_sample_range']} is not supported (only 1.0)")
    return _build(DiffusionConfig, where, {
        "schedule": pick("beta_schedule", _SCHEDULES, "linear"),
        "num_timesteps": cfg.get("num_train_timesteps", 1000),
        "beta_start": cfg.get("beta_start", 1e-4),
        "beta_end": cfg.get("beta_end", 0.02),
        "prediction": pick("prediction_type", _PREDICTIONS, "epsilon"),
        "variance": pick("variance_type", _VARIANCES, "fixed_small"),
        "clip_denoised": cfg.get("clip_sample", True),
    })


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def convert_state_dict(state: dict[str, torch.Tensor], num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DModel`` tensor names (old and new attention names) to this U-Net's.

    The separate q, k and v projections become one fused ``qkv`` projection (one matmul).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        m = re.match(r"^(.*)\.(to_q|to_k|to_v|query|key|value)\.(weight|bias)$", key)
        if m:
            prefix, which, kind = m.groups()
            qkv.setdefault(_rename(f"{prefix}.qkv.{kind}"), [None, None, None])[_QKV[which]] = value
        else:
            out[_rename(key)] = value
    for key, parts in qkv.items():
        present = [p for p in parts if p is not None]
        if len(present) != 3:
            raise ConversionError(f"attention {key}: q, k and v must all be present")
        out[key] = torch.cat(present)
    # Old checkpoints store attention projections as 1x1 convs; ours are Linear.
    for key, value in list(out.items()):
        if key.endswith((".proj.weight", ".qkv.weight")) and value.ndim == 4:
            out[key] = value[:, :, 0, 0]
    if num_classes is not None and "class_embed.weight" in out:
        # diffusers has no null label: add one whose embedding is zero, i.e. "no class".
        emb = out["class_embed.weight"]
        out["class_embed.weight"] = torch.cat([emb, emb.new_zeros(1, emb.shape[1])])
    return out


def load_diffusers_weights(src: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    path = _find(src, "unet", "diffusion_pytorch_model.safetensors")
    if path is not None:
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several kinds for a bad file
            raise ConversionError(f"{path}: not a readable safetensors file: {exc}") from exc
    path = _find(src, "unet", "diffusion_pytorch_model.bin")
    if path is None:
        raise ConversionError(f"{src}: no unet/diffusion_pytorch_model.safetensors")
    if not allow_pickle:
        raise ConversionError(
            f"{path}: a pickle (.bin) file is refused because unpickling can run code; "
            "convert it to safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a state dict")
    return state


def convert_diffusers(
    src: str | Path, out: str | Path, *, allow_pickle: bool = False, name: str | None = None
) -> ModelConfig:
    """Write ``out`` (.safetensors) from the diffusers folder ``src``; returns the config it wrote."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: not a directory")
    unet_json = _find(src, "unet", "config.json")
    sched_json = _find(src, "scheduler", "scheduler_config.json")
    unet_cfg = unet_config_from_diffusers(_read_json(unet_json, "config.json", src), unet_json or src)
    diff_cfg = diffusion_config_from_diffusers(_read_json(sched_json, "scheduler_config.json", src), sched_json or src)
    config = ModelConfig(
        name=name or src.resolve().name,
        unet=unet_cfg,
        diffusion=diff_cfg,
        sampling=SamplingConfig(),
        provenance={"converted_from": str(src.resolve()), "format": "diffusers UNet2DModel + DDPMScheduler"},
    )
    tensors = convert_state_dict(load_diffusers_weights(src, allow_pickle), unet_cfg.num_classes)
    try:
        build_unet(config, tensors, src)  # every tensor present and shaped right before anything is written
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from exc
    save_checkpoint(out, tensors, config)
    return config


# Ours -> diffusers: the inverse of _RENAMES. Each of our names has exactly one diffusers name
# (the new attention names: to_q/to_k/to_v, to_out.0, group_norm); ".norm." occurs only in
# attention blocks (ResBlocks have norm1/norm2), ".proj." only as the attention output.
_EXPORT_RENAMES = [
    (r"^time_embed\.0\.", "time_embedding.linear_1."),
    (r"^time_embed\.2\.", "time_embedding.linear_2."),
    (r"^class_embed\.", "class_embedding."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^mid_block1\.", "mid_block.resnets.0."),
    (r"^mid_block2\.", "mid_block.resnets.1."),
    (r"^mid_attn\.", "mid_block.attentions.0."),
    (r"^down\.(\d+)\.blocks\.", r"down_blocks.\1.resnets."),
    (r"^down\.(\d+)\.attns\.", r"down_blocks.\1.attentions."),
    (r"^down\.(\d+)\.resample\.", r"down_blocks.\1.downsamplers.0."),
    (r"^up\.(\d+)\.blocks\.", r"up_blocks.\1.resnets."),
    (r"^up\.(\d+)\.attns\.", r"up_blocks.\1.attentions."),
    (r"^up\.(\d+)\.resample\.", r"up_blocks.\1.upsamplers.0."),
    (r"\.time_proj\.", ".time_emb_proj."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"\.norm\.", ".group_norm."),
    (r"\.proj\.", ".to_out.0."),
]
_SCHEDULES_OUT = {v: k for k, v in _SCHEDULES.items()}
_PREDICTIONS_OUT = {v: k for k, v in _PREDICTIONS.items()}


def unet_config_to_diffusers(cfg: UNetConfig) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for the same network.

    Class conditioning maps exactly: ours adds ``class_embed(label)`` to the time embedding, as
    diffusers does with ``num_class_embeds`` and ``class_embed_type=None``; our table has one
    extra row, the null label (index ``num_classes``, trained by label dropout), which becomes
    one more class, so diffusers' ``class_labels=num_classes`` is our unconditional row.
    """
    down = ["AttnDownBlock2D" if cfg.image_size // 2**i in cfg.attention_resolutions else "DownBlock2D"
            for i in range(len(cfg.channel_mult))]
    shift = cfg.time_freq_shift
    return {
        **_REQUIRED,
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": down,
        "up_block_types": [k.replace("Down", "Up") for k in reversed(down)],
        "attention_head_dim": cfg.attention_head_dim,
        "dropout": cfg.dropout,
        "norm_num_groups": cfg.norm_groups,
        "norm_eps": cfg.norm_eps,
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,
        "downsample_padding": cfg.downsample_padding,
        "flip_sin_to_cos": cfg.time_flip_sin_to_cos,
        "freq_shift": int(shift) if float(shift).is_integer() else shift,
    }


def scheduler_config_to_diffusers(config: ModelConfig) -> dict[str, Any]:
    """``DDPMScheduler`` keyword arguments for the same diffusion (``DDIMScheduler.from_config`` takes them too)."""
    d = config.diffusion
    return {
        "num_train_timesteps": d.num_timesteps,
        "beta_start": d.beta_start,
        "beta_end": d.beta_end,
        "beta_schedule": _SCHEDULES_OUT[d.schedule],
        "prediction_type": _PREDICTIONS_OUT[d.prediction],
        "variance_type": d.variance,
        "clip_sample": d.clip_denoised,
        "timestep_spacing": config.sampling.spacing,
    }


def state_dict_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensor names to diffusers' ``UNet2DModel`` names; the fused qkv splits into to_q, to_k, to_v."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, repl in _EXPORT_RENAMES:
            key = re.sub(pattern, repl, key)
        m = re.match(r"^(.*)\.qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3), strict=True):
                out[f"{m.group(1)}.{name}.{m.group(2)}"] = part.contiguous()
        else:
            out[key] = value.contiguous()
    return out


def export_diffusers(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out``/unet (config.json + safetensors) and ``out``/scheduler from our checkpoint."""
    config, tensors = read_checkpoint(checkpoint)
    out = Path(out)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    unet_cfg = {"_class_name": "UNet2DModel", **unet_config_to_diffusers(config.unet)}
    (out / "unet" / "config.json").write_text(json.dumps(unet_cfg, indent=2))
    save_file({k: v.float() for k, v in state_dict_to_diffusers(tensors).items()},
              str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    sched_cfg = {"_class_name": "DDPMScheduler", **scheduler_config_to_diffusers(config)}
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=2))
    return out
