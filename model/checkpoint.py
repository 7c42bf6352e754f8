"""Checkpoints: one .safetensors file with the weights and the whole ModelConfig as JSON metadata.

safetensors holds raw tensors and a JSON header, so loading never unpickles anything. Writes
are atomic (a temporary file in the same directory, fsync, rename), so a crash mid-write leaves
the previous file intact. Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ConfigError, ModelConfig
from .unet import UNet

CONFIG_KEY = "ddpm_serve.config"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, truncated, or does not match its config."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the result over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file 0600; a checkpoint is read by other users (a non-root server
        # container), so give it the mode an ordinary file gets under the usual umask.
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path



def save_checkpoint(
    path: str | os.PathLike[str],
    weights: nn.Module | Mapping[str, torch.Tensor],
    config: ModelConfig,
) -> Path:
    """Write the U-Net weights (float32, on the CPU) and ``config`` to ``path`` atomically."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    metadata = {CONFIG_KEY: config.to_json(), "format": "pt"}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def weights_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a safetensors file's tensor bytes (everything after the header): equal digests
    mean byte-identical weights, whatever the metadata says."""
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + header_len)
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def replace_config(path: str | os.PathLike[str], config: ModelConfig) -> Path:
    """Rewrite only the metadata config of the checkpoint at ``path``, atomically: the header is
    replaced and the tensor bytes are copied as they are, so the weights cannot change (the
    digest before and after is compared). ``config`` must fit the file's tensors."""
    path = Path(path)
    old_config = read_config(path)  # the file is a valid checkpoint
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    check_shapes(config, shapes, path)
    header["__metadata__"] = {**header.get("__metadata__", {}), CONFIG_KEY: config.to_json()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8-byte alignment
    before = weights_digest(path)

    def write(tmp: Path) -> None:
        tmp.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + header_len :])

    atomic_write(path, write)
    if weights_digest(path) != before or read_config(path) != config:
        raise CheckpointError(f"{path}: rewriting the config of {old_config.name} changed more than the config")
    return path


def read_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Only the config of a checkpoint, from its header, checked against the header's tensor
    shapes; no tensor is read and no network is built."""
    return _read(Path(path), tensors=False)[0]


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and the tensors of a checkpoint, checked but not yet put into a network.

    In order, each failure a CheckpointError naming the file: the path is a readable file; its
    header parses; the metadata holds a valid config (types, ranges, sizes); the network that
    config declares has exactly the header's tensor names and shapes (worked out on torch's
    "meta" device, so a small file that claims a huge network is refused before anything is
    allocated); and only then are the tensors read, each required to be finite.
    """
    return _read(Path(path), tensors=True)


def _read(path: Path, tensors: bool) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file (pass the .safetensors file inside)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
            config = _config(path, metadata)
            check_shapes(config, shapes, path)
            loaded = {key: f.get_tensor(key) for key in shapes} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    for key, value in loaded.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key} holds non-finite values (NaN or infinity); "
                                  "the weights are corrupt or training diverged")
    return config, loaded


def _config(path: Path, metadata: Mapping[str, str]) -> ModelConfig:
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path}: no '{CONFIG_KEY}' in the safetensors metadata; not a ddpm-serve checkpoint "
            "(a diffusers folder can be imported with `ddpm convert`)"
        )
    try:
        return ModelConfig.from_json(metadata[CONFIG_KEY])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid config in metadata: {exc}") from None


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of the network ``config`` declares, without allocating
    it: the U-Net is built on torch's "meta" device, where tensors have shapes but no storage."""
    with torch.device("meta"):
        unet = UNet(config.unet)
    return {key: tuple(value.shape) for key, value in unet.state_dict().items()}


def check_shapes(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]], path: str | os.PathLike[str]) -> None:
    """Refuse tensors (by name and shape) that are not exactly those of the declared network."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k}: file {tuple(shapes[k])} vs config {v}" for k, v in expected.items()
             if k in shapes and tuple(shapes[k]) != v]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise CheckpointError(f"{path}: weights do not match the config's network: {'; '.join(problems)}")


def build_unet(config: ModelConfig, tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> UNet:
    """A U-Net for ``config`` holding ``tensors``; any missing, extra or misshapen tensor is an
    error, found before the network is allocated."""
    check_shapes(config, {k: tuple(v.shape) for k, v in tensors.items()}, path)
    unet = UNet(config.unet)
    unet.load_state_dict(dict(tensors))
    return unet
