"""How the network runs: bf16, channels_last, bucket padding, torch.compile, threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import RowSpec, load_checkpoint, resolve_dtype
from model.device import (
    available_cpus,
    cgroup_cpu_quota,
    configure_threads,
    cpu_has_fast_bf16,
    rows_that_fit,
)
from model.runner import Denoiser, default_buckets, gflops_per_image

from .conftest import TINY_UNET, randomized_unet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 100, (n,), generator=g),
            torch.randint(0, 11, (n,), generator=g))


def test_default_buckets() -> None:
    assert default_buckets(1) == [1]
    assert default_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


def test_bucket_padding_does_not_change_any_row() -> None:
    plain = Denoiser(randomized_unet(TINY_UNET))
    padded = Denoiser(randomized_unet(TINY_UNET), buckets=[4, 8])
    assert [padded.bucket(n) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 9]
    for n in (1, 3, 5, 8):
        x, t, y = _inputs(n)
        out = padded(x, t, y)
        assert out.shape == (n, 1, 8, 8) and out.dtype == torch.float32
        torch.testing.assert_close(out, plain(x, t, y), atol=1e-5, rtol=1e-5)


def test_a_rows_image_is_the_same_in_any_bucket(tiny_checkpoint: Path) -> None:
    eager = load_checkpoint(tiny_checkpoint, device="cpu")
    bucketed = load_checkpoint(tiny_checkpoint, device="cpu", buckets=[8, 16])
    a = eager.sample(3, seed=21, steps=10, sampler="ddpm", label=4, guidance=1.0)
    b = bucketed.sample(3, seed=21, steps=10, sampler="ddpm", label=4, guidance=1.0)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_bf16_channels_last_path(tiny_checkpoint: Path) -> None:
    fp32 = load_checkpoint(tiny_checkpoint, device="cpu")
    bf16 = load_checkpoint(tiny_checkpoint, device="cpu", dtype="bfloat16", channels_last=True)
    assert bf16.dtype == torch.bfloat16 and next(bf16.unet.parameters()).dtype == torch.bfloat16
    x, t, y = _inputs(4)
    out = bf16.denoiser(x, t, y)
    assert out.dtype == torch.float32  # the sampler's state stays float32
    ref = fp32.denoiser(x, t, y)
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item() + 0.02
    a = fp32.sample(4, seed=3, steps=8, sampler="ddim")
    b = bf16.sample(4, seed=3, steps=8, sampler="ddim")
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 8


def test_dtype_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit dtype is kept; "auto" on a CPU is bf16 only where bf16 is native and the
    network large (unknown size: assumed large), whatever this machine's CPU can do."""
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu, gflops_per_image=0.01) == torch.bfloat16
    for native, large, small in ((True, torch.bfloat16, torch.float32), (False, torch.float32, torch.float32)):
        monkeypatch.setattr("model.device.cpu_has_fast_bf16", lambda native=native: native)
        assert resolve_dtype("auto", cpu) == large
        assert resolve_dtype("auto", cpu, gflops_per_image=12.0) == large
        assert resolve_dtype("auto", cpu, gflops_per_image=0.05) == small
    with pytest.raises(ValueError, match="dtype='float64'"):
        resolve_dtype("float64", cpu)


def test_a_device_this_machine_lacks_is_one_clear_error() -> None:
    from model.device import DeviceError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'gpu7' is not a device"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_threads_respect_the_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(v1) == 2.0
    # Eight CPUs in the affinity mask, a quota of one and a half: two threads, not eight.
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr("model.device.cgroup_cpu_quota", lambda: 1.5)
    assert available_cpus() == 2
    monkeypatch.setattr("model.device.cgroup_cpu_quota", lambda: None)
    assert available_cpus() == 8
    monkeypatch.setattr("model.device.cgroup_cpu_quota", lambda: 0.2)
    assert available_cpus() == 1
    before = torch.get_num_threads()
    try:
        assert configure_threads(None, gflops_per_image=0.05) == 1  # overhead-bound: one thread
        assert configure_threads(None, gflops_per_image=12.0) == 1 == torch.get_num_threads()  # the quota
        assert configure_threads(3, gflops_per_image=0.05) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compiled_path_matches_eager(tiny_checkpoint: Path) -> None:
    """torch.compile with buckets: every bucket built at warm-up, outputs equal to eager."""
    eager = load_checkpoint(tiny_checkpoint, device="cpu")
    compiled = load_checkpoint(tiny_checkpoint, device="cpu", compile=True, buckets=[4])  # one graph: compiling is slow
    seconds = compiled.denoiser.warm_up((1, 8, 8), conditional=True)
    assert seconds > 0 and compiled.denoiser.compile_seconds == seconds
    for n in (1, 3, 4):
        x, t, y = _inputs(n)
        torch.testing.assert_close(compiled.denoiser(x, t, y), eager.denoiser(x, t, y), atol=1e-4, rtol=1e-4)
    batch = compiled.row_batch(2)
    row = batch.add(RowSpec(compiled.plan("dpmpp_2m", 6), seed=1, label=3, guidance=1.0))
    while not row.done:
        batch.step()
    assert row.image is not None
    expected = eager.sample(1, seed=1, steps=6, sampler="dpmpp_2m", label=3, guidance=1.0)[0]
    assert np.abs(row.image.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.gpu
@cuda
def test_cuda_graphs_bf16_and_memory_sizing(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint, device="cuda", dtype="auto", channels_last=True, compile=True,
                            buckets=[1, 2, 4])
    model.denoiser.warm_up((1, 8, 8), conditional=True)
    ref = load_checkpoint(tiny_checkpoint, device="cpu")
    a = model.sample(3, seed=5, steps=10, label=2, guidance=1.0)
    b = ref.sample(3, seed=5, steps=10, label=2, guidance=1.0)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 8
    rows = rows_that_fit(lambda n: model.denoiser(*_inputs(n)[:2]), model.device)
    assert rows >= 8


def test_auto_precision_follows_the_work_per_image() -> None:
    """bf16 on a CPU only for networks big enough to gain from it; channels_last by default."""
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, gflops_per_image=0.05) == torch.float32
    assert resolve_dtype("auto", cpu, gflops_per_image=12.0) == (
        torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    tiny = randomized_unet(TINY_UNET)
    assert 0 < gflops_per_image(tiny) < 0.05
    model = load_checkpoint(None, device="cpu", dtype="auto")  # the embedded digits network: 0.05 GFLOP
    assert model.dtype == torch.float32 and model.denoiser.channels_last
