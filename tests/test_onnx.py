"""The ONNX export and the ONNX Runtime / OpenVINO runners: parity, contract, choice, same images."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import cli
from model import ModelConfig, load_checkpoint
from model.checkpoint import CONFIG_KEY
from model.images import decode_png
from model.runtimes import RuntimeChoice, RuntimeOptions, choose_runtime
from model.runtimes import choice as choice_module
from model.runtimes import export as export_module
from model.runtimes.export import NULL_LABEL_KEY, export_onnx, onnx_bytes, read_metadata
from model.runtimes.ort_runner import OnnxRuntimeDenoiser

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CPU = torch.device("cpu")


NO_OPENVINO = "openvino is not installed (pip install openvino)"

@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> tuple[object, bytes]:
    model = load_checkpoint(tiny_checkpoint, device="cpu", dtype="float32", channels_last=False)
    return model, onnx_bytes(model.unet, model.config)


@pytest.fixture(scope="module")
def embedded() -> tuple[object, bytes]:
    model = load_checkpoint(None, device="cpu", dtype="float32", channels_last=False)
    return model, onnx_bytes(model.unet, model.config)


def session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def inputs(batch: int, config: ModelConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    c = config.unet
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g)
    t = torch.randint(0, config.diffusion.num_timesteps, (batch,), generator=g)
    t[0] = 0  # the ends of the schedule
    t[-1] = config.diffusion.num_timesteps - 1
    labels = None
    if c.num_classes:
        labels = torch.randint(0, c.num_classes + 1, (batch,), generator=g)
        labels[-1] = c.num_classes  # classifier-free guidance's null label
    return x, t, labels


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_export_matches_the_network_across_batches_timesteps_and_labels(which: str, request) -> None:
    model, data = request.getfixturevalue(which)
    sess = session(data)
    for batch, seed in ((1, 0), (2, 1), (7, 2), (33, 3)):
        x, t, labels = inputs(batch, model.config, seed)
        with torch.inference_mode():
            ref = model.unet(x, t, labels).numpy()
        out = sess.run(None, {"x": x.numpy(), "t": t.numpy(), "labels": labels.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-4, (batch, np.abs(out - ref).max())
        assert np.abs(ref).max() > 100 * np.abs(out - ref).max()  # the outputs are far from zero


def test_unconditional_export_takes_no_labels(tiny_uncond_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_uncond_checkpoint, device="cpu", dtype="float32", channels_last=False)
    data = onnx_bytes(model.unet, model.config)
    sess = session(data)
    assert [i.name for i in sess.get_inputs()] == ["x", "t"]
    x, t, _ = inputs(5, model.config, 4)
    with torch.inference_mode():
        ref = model.unet(x, t).numpy()
    assert np.abs(sess.run(None, {"x": x.numpy(), "t": t.numpy()})[0] - ref).max() <= 1e-4
    assert read_metadata(data)[NULL_LABEL_KEY] == ""


def test_export_is_checked_dynamic_and_carries_the_config(tiny) -> None:
    model, data = tiny
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    dims = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert dims["t"].elem_type == onnx.TensorProto.INT64 and dims["labels"].elem_type == onnx.TensorProto.INT64
    batch = {tt.shape.dim[0].dim_param for tt in dims.values()}
    assert len(batch) == 1 and batch.pop()  # one symbolic batch dimension shared by all inputs
    meta = read_metadata(data)
    assert ModelConfig.from_json(meta[CONFIG_KEY]) == model.config
    assert meta[NULL_LABEL_KEY] == str(model.config.num_classes)


@pytest.mark.slow
def test_export_leaves_a_cast_network_alone(tiny_checkpoint: Path) -> None:
    """A torch Denoiser casts its network in place (bf16, channels_last); exporting it takes a
    float32 copy and leaves the served network as it was."""
    model = load_checkpoint(tiny_checkpoint, device="cpu", dtype="bfloat16", channels_last=True)
    conv = model.unet.conv_in.weight
    data = export_onnx(model.unet, model.config)
    assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)
    fp32 = load_checkpoint(tiny_checkpoint, device="cpu", dtype="float32", channels_last=False)
    x, t, labels = inputs(3, fp32.config, 5)
    with torch.inference_mode():
        ref = fp32.unet(x, t, labels).numpy()
    out = session(data).run(None, {"x": x.numpy(), "t": t.numpy(), "labels": labels.numpy()})[0]
    assert out.dtype == np.float32
    # The weights went through bf16 once (8 bits of mantissa), so only that rounding remains.
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()


def test_cli_export_writes_a_loadable_graph(tiny, tiny_checkpoint: Path, tmp_path: Path, capsys,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = tiny  # the export itself is tested above; this is the command around it
    monkeypatch.setattr(export_module, "export_onnx", lambda unet, config: data if config == model.config else b"")
    out = tmp_path / "sub" / "tiny.onnx"
    assert cli.main(["export", "--format", "onnx", str(tiny_checkpoint), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["x", "t", "labels"]
    assert cli.main(["export", "--format", "onnx", str(tmp_path / "missing.safetensors"), str(out)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "--format", "torchscript", str(tiny_checkpoint), str(out)])


def test_export_cache_on_disk_is_reused(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = tiny
    exports: list[int] = []
    monkeypatch.setattr(export_module, "export_onnx", lambda *a: exports.append(1) or data)
    monkeypatch.setattr(export_module, "_memory", {})
    assert onnx_bytes(model.unet, model.config, tmp_path) == data
    assert onnx_bytes(model.unet, model.config, tmp_path) == data  # from memory
    assert len(exports) == 1 and len(list(tmp_path.glob("*.onnx"))) == 1
    monkeypatch.setattr(export_module, "_memory", {})  # a new process
    assert onnx_bytes(model.unet, model.config, tmp_path) == data
    assert len(exports) == 1
    other = tmp_path / "other"  # known in memory, new cache dir: written there too
    assert onnx_bytes(model.unet, model.config, other) == data and list(other.glob("*.onnx"))
    changed = dataclasses.replace(model.config, name="tiny2")
    onnx_bytes(model.unet, changed, tmp_path)  # another config is another graph
    assert len(exports) == 2


def test_runner_has_the_denoiser_contract(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint, device="cpu", runtime="onnxruntime")
    ref = load_checkpoint(tiny_checkpoint, device="cpu")
    den = model.denoiser
    assert isinstance(den, OnnxRuntimeDenoiser)
    assert (den.device, den.dtype, den.channels_last, den.compiled, den.buckets, den.compile_seconds) == (
        CPU, torch.float32, False, False, None, 0.0)
    assert model.dtype == torch.float32
    x, t, labels = inputs(6, model.config, 6)
    out = den(x, t, labels)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, ref.denoiser(x, t, labels), atol=1e-4)
    null = torch.full_like(t, model.config.num_classes)
    assert torch.allclose(den(x, t, None), den(x, t, null))  # no labels: every row unconditional
    out[:] = 0  # the output belongs to the caller: the next call does not see this
    assert den(x, t, labels).abs().max() > 0
    assert den.warm_up(model.image_shape, conditional=True) > 0


def test_unconditional_runner_refuses_labels(tiny_uncond_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_uncond_checkpoint, device="cpu", runtime="onnxruntime")
    x, t, _ = inputs(2, model.config, 7)
    assert model.denoiser(x, t).shape == x.shape
    with pytest.raises(ValueError, match="unconditional"):
        model.denoiser(x, t, torch.zeros(2, dtype=torch.long))


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason=NO_OPENVINO)
def test_openvino_runner_matches(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint, device="cpu", runtime="openvino")
    ref = load_checkpoint(tiny_checkpoint, device="cpu")
    assert model.runtime_choice.name == "openvino" and model.denoiser.dtype == torch.float32
    for batch in (1, 9):
        x, t, labels = inputs(batch, model.config, batch)
        assert torch.allclose(model.denoiser(x, t, labels), ref.denoiser(x, t, labels), atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason=NO_OPENVINO)
def test_openvino_runs_bf16_when_asked(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint, device="cpu", runtime="openvino", dtype="bfloat16")
    ref = load_checkpoint(tiny_checkpoint, device="cpu")
    assert model.dtype == torch.bfloat16 and model.denoiser.dtype == torch.bfloat16
    x, t, labels = inputs(4, model.config, 8)
    out, exact = model.denoiser(x, t, labels), ref.denoiser(x, t, labels)
    assert out.dtype == torch.float32  # bf16 inside, float32 to the sampler like Denoiser
    assert 0 < (out - exact).abs().max() <= 0.05 * exact.abs().max()  # bf16 rounding, and only that


SAMPLERS = [("ddim", 20, 0.0), ("dpmpp_2m", 10, 1.5), ("ddpm", 50, 0.0)]


@pytest.mark.parametrize(("sampler", "steps", "guidance"), SAMPLERS)
def test_same_seeds_give_the_same_images(sampler: str, steps: int, guidance: float) -> None:
    """Images within one intensity level on >= 99.9 % of pixels, guidance's doubled rows included."""
    torch_model = load_checkpoint(None, device="cpu")
    onnx_model = load_checkpoint(None, device="cpu", runtime="onnxruntime")
    labels = [i % 10 if i % 3 else None for i in range(12)]
    kwargs = {"steps": steps, "sampler": sampler, "seed": 11, "label": labels, "guidance": guidance}
    a = torch_model.sample(12, **kwargs).astype(int)
    b = onnx_model.sample(12, **kwargs).astype(int)
    close = np.abs(a - b) <= 1
    assert close.mean() >= 0.999, close.mean()
    assert a.std() > 10  # real images, not blanks


def test_auto_picks_onnxruntime_for_the_small_network_on_a_cpu() -> None:
    model = load_checkpoint(None, device="cpu", runtime="auto")
    assert model.runtime_choice.name == "onnxruntime"
    assert "GFLOP" in model.runtime_choice.reason
    assert model.runtime_choice.as_dict()["requested"] == "auto"


@pytest.mark.parametrize(("kwargs", "name", "why"), [
    ({"device": torch.device("cuda")}, "torch", "cuda"),
    ({"compile": True}, "torch", "compile"),
    ({"dtype": "bfloat16"}, "torch", "bfloat16"),
    ({"gflops_per_image": 12.0, "dtype": "auto"}, "?", ""),
])
def test_auto_rule(kwargs: dict, name: str, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = {"device": CPU, "dtype": "auto", "gflops_per_image": 0.05, "compile": False, **kwargs}
    if name == "?":  # a large network: bf16 where it is native (OpenVINO's if installed), else ONNX Runtime
        for native, openvino, expected in ((True, True, "openvino"), (True, False, "torch"),
                                           (False, True, "onnxruntime"), (False, False, "onnxruntime")):
            monkeypatch.setattr("model.device.cpu_has_fast_bf16", lambda native=native: native)
            monkeypatch.setattr(choice_module, "installed", lambda rt, openvino=openvino: rt != "openvino" or openvino)
            choice = choose_runtime("auto", **args)
            assert choice.name == expected, (native, openvino)
            assert ("ddpm-serve[openvino]" in choice.reason) == (expected == "torch")  # the hint
            if expected == "openvino":
                assert choice_module.runtime_dtype(choice, "auto", CPU, 12.0) == torch.bfloat16
        return
    choice = choose_runtime("auto", **args)
    assert (choice.name, why in choice.reason) == (name, True)


def test_explicit_runtime_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="not one of auto, torch, onnxruntime, openvino"):
        choose_runtime("tensorrt", device=CPU, dtype="auto", gflops_per_image=0.05, compile=False)
    with pytest.raises(ValueError, match="runs float32"):
        choose_runtime("onnxruntime", device=CPU, dtype="bfloat16", gflops_per_image=0.05, compile=False)
    with pytest.raises(ValueError, match="runs float32"):
        choose_runtime("openvino", device=CPU, dtype="float16", gflops_per_image=0.05, compile=False)
    with pytest.raises(ValueError, match="CPU"):
        choose_runtime("openvino", device=torch.device("cuda"), dtype="auto", gflops_per_image=0.05, compile=False)
    with pytest.raises(ValueError, match="torch.compile"):
        choose_runtime("onnxruntime", device=CPU, dtype="auto", gflops_per_image=0.05, compile=True)
    assert choose_runtime("torch", device=CPU, dtype="auto", gflops_per_image=0.05, compile=False) == RuntimeChoice(
        "torch", "torch", "asked for")


def test_without_onnxruntime_auto_means_torch_and_explicit_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(choice_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    model = load_checkpoint(None, device="cpu", runtime="auto")
    assert model.runtime_choice.name == "torch" and "onnxruntime is not installed" in model.runtime_choice.reason
    with pytest.raises(ValueError, match=r"onnx and onnxruntime are dependencies"):
        load_checkpoint(None, device="cpu", runtime="onnxruntime")


def test_runtime_options_set_the_session(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = load_checkpoint(tiny_checkpoint, device="cpu", runtime="onnxruntime",
                            runtime_options=RuntimeOptions(threads=2, cache_dir=tmp_path, spinning=False))
    den = model.denoiser
    assert isinstance(den, OnnxRuntimeDenoiser)
    assert den.threads == 2 and den.spinning is False
    assert list(tmp_path.glob("*.onnx"))


def test_server_serves_with_onnxruntime(tiny_checkpoint: Path) -> None:
    from .live import live_server

    model = load_checkpoint(tiny_checkpoint, device="cpu", runtime="onnxruntime")
    ref = load_checkpoint(tiny_checkpoint, device="cpu")
    body = {"n": 2, "steps": 5, "sampler": "ddim", "seed": 3, "label": 4, "guidance": 1.0,
            "response_format": "base64"}
    with live_server(tiny_checkpoint, model=model) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/generate", json=body)
        assert r.status_code == 200, r.text
    got = np.stack([decode_png(base64.b64decode(im["png_base64"])) for im in r.json()["images"]])
    expected = ref.sample(2, steps=5, sampler="ddim", seed=3, label=4, guidance=1.0)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_the_server_resolves_ddpm_runtime_and_shows_its_choice(tiny_checkpoint: Path) -> None:
    """DDPM_RUNTIME=auto on a CPU serves the small network with ONNX Runtime, and /v1/model says
    what runs the network and why; compiling is torch's, so it never meets another runtime."""
    from fastapi.testclient import TestClient
    from pydantic import ValidationError

    from app import Settings, create_app

    with TestClient(create_app(Settings(checkpoint=tiny_checkpoint))) as client:
        deadline = time.monotonic() + 60  # warm-up runs on its own thread after start-up
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        runner = client.get("/v1/model").json()["runner"]
        r = client.post("/generate", json={"steps": 3, "seed": 1})
    assert runner["name"] == "onnxruntime" and runner["requested"] == "auto" and "float32 on a CPU" in runner["reason"]
    assert runner["threads"] == 1 and r.status_code == 200
    with pytest.raises(ValidationError, match="torch.compile"):
        Settings(compile=True, runtime="onnxruntime")


def test_the_export_writes_nothing_to_the_log_at_info(tiny: tuple[object, bytes], caplog: pytest.LogCaptureFixture,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A server exports at start-up with its log at INFO: the exporter's and its optimizer's
    narration (hundreds of lines per export) stays out of it, and their levels are restored."""
    import logging

    model, _ = tiny
    before = {name: logging.getLogger(name).level for name in export_module.NARRATORS}
    with caplog.at_level(logging.INFO):
        export_onnx(model.unet, model.config)  # type: ignore[attr-defined]
    assert [r for r in caplog.records if not r.name.startswith("ddpm")] == []
    assert capsys.readouterr().out == ""
    assert {name: logging.getLogger(name).level for name in export_module.NARRATORS} == before
