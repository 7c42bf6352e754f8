"""The training loop: checkpoints that load, exact resume, kill-safety, and DDP equivalence."""

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_checkpoint, read_checkpoint
from training.ema import ema_decay
from training.state import read_state
from training.trainer import lr_at

from .train_utils import PYTHON, REPO, TINY_ARGS, state_tensors, subprocess_env, train_tiny


def test_a_tiny_run_writes_a_checkpoint_that_loads_and_samples(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_tiny(run, "--train.steps=6", "--log.checkpoint_every=3", "--log.eval_every=6", "--log.sample_every=6")
    model = load_checkpoint(run / "ema.safetensors", device="cpu")
    cfg = model.config
    assert (cfg.image_size, cfg.channels, cfg.num_classes, cfg.data_levels) == (8, 1, 10, 17)
    prov = cfg.provenance
    assert prov["data"]["dataset"] == "digits" and prov["data"]["heldout_images"] == 359
    assert prov["steps"] == 6 and prov["command"].startswith("ddpm train --config tiny") and "date" in prov
    assert "git_commit" in prov and prov["world_size"] == 1
    images = model.sample(3, seed=1, label=[0, 1, 2])
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    # The config that was used, the metrics and a sample grid are in the run directory.
    used = json.loads((run / "config.json").read_text())
    assert used["model"]["unet"]["image_size"] == 8 and used["train"]["steps"] == 6
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if m["kind"] == "train"]
    assert [m["step"] for m in train_lines] == [2, 4, 6]
    assert all(np.isfinite(m["loss"]) and m["images_per_s"] > 0 for m in train_lines)
    evals = [m for m in lines if m["kind"] == "eval"]
    assert evals and {"heldout_loss", "bpd_estimate", "fd", "floor", "accuracy"} <= set(evals[0])
    assert (run / "samples" / "step_0000006.png").is_file()


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """3 steps, stop, resume for 3 more == 6 steps straight through, bit for bit (dropout on)."""
    common = ["--log.checkpoint_every=3", "--model.unet.dropout=0.2"]
    train_tiny(tmp_path / "straight", "--train.steps=6", *common)
    train_tiny(tmp_path / "split", "--train.steps=3", *common)
    meta, _ = read_state(tmp_path / "split" / "state.safetensors")
    assert meta["step"] == 3
    err = train_tiny(tmp_path / "split", "--train.steps=6", resume=True)
    assert "steps 3 -> 6" in err
    a, b = state_tensors(tmp_path / "straight"), state_tensors(tmp_path / "split")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a) and any(k.startswith("ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta_a, _ = read_state(tmp_path / "straight" / "state.safetensors")
    meta_b, _ = read_state(tmp_path / "split" / "state.safetensors")
    assert meta_a["step"] == meta_b["step"] == 6 and meta_a["ema_updates"] == meta_b["ema_updates"] == 6
    assert meta_a["optimizer"] == meta_b["optimizer"]
    lines = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines if m["kind"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert read_checkpoint(tmp_path / "split" / "ema.safetensors")[0].provenance["resumed_with"]


def test_a_run_that_exists_is_not_overwritten(tmp_path: Path) -> None:
    from .train_utils import ddpm

    train_tiny(tmp_path, "--train.steps=1")
    code, err = ddpm("train", *TINY_ARGS, "--run-dir", str(tmp_path))
    assert code == 2 and "already holds a run" in err and "--resume" in err
    code, err = ddpm("train", "--resume", "--run-dir", str(tmp_path), "--model.unet.base_channels=8")
    assert code == 2 and "cannot change when resuming" in err


# A training process that SIGKILLs itself halfway through writing its second resume state.
_KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    import training.state as state
    real = state.save_file
    calls = []
    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            real(tensors, path, metadata=metadata)
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])  # half a file on disk ...
            os.kill(os.getpid(), signal.SIGKILL)  # ... and no chance to clean up
        return real(tensors, path, metadata=metadata)
    state.save_file = save_file
    import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_sigkill_mid_write_keeps_the_previous_state_and_resume_works(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY_ARGS, "--run-dir", str(run), "--train.steps=8", "--log.checkpoint_every=2"]
    proc = subprocess.run([PYTHON, "-c", _KILL_MID_WRITE, "train", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert list(run.glob(".state.safetensors.*.tmp")), "the kill should have left a half-written temporary file"
    meta, _ = read_state(run / "state.safetensors")  # the previous state, whole
    assert meta["step"] == 2
    assert read_checkpoint(run / "ema.safetensors")[0].provenance["steps"] in (2, 4)
    train_tiny(run, resume=True)
    meta, _ = read_state(run / "state.safetensors")
    assert meta["step"] == 8
    assert not list(run.glob(".*.tmp")), "stale temporary files are cleaned up on resume"
    # ... and the result equals an uninterrupted run.
    train_tiny(tmp_path / "straight", "--train.steps=8", "--log.checkpoint_every=2")
    a, b = state_tensors(run), state_tensors(tmp_path / "straight")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ddp_two_processes_equal_one_with_the_whole_batch(tmp_path: Path) -> None:
    """torchrun, gloo, 2 CPU processes with half the batch each == 1 process with all of it."""
    args = [*TINY_ARGS, "--train.steps=4", "--log.checkpoint_every=4", "--train.batch_size=16"]
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "cli.py", "train"]
    proc = subprocess.run([*torchrun, *args, "--run-dir", str(tmp_path / "ddp")], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stderr
    train_tiny(tmp_path / "single", *args[len(TINY_ARGS):])
    ddp, single = state_tensors(tmp_path / "ddp"), state_tensors(tmp_path / "single")
    compared = 0
    for key in single:
        if key.startswith(("model.", "ema.", "optim.")):
            torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
            compared += 1
    assert compared > 50
    assert not torch.equal(ddp["rng.0.torch"], ddp["rng.1.torch"])  # each process its own dropout stream
    cfg = read_checkpoint(tmp_path / "ddp" / "ema.safetensors")[0]
    assert cfg.provenance["world_size"] == 2


def test_lr_warmup_and_cosine() -> None:
    from training.config import TrainConfig

    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", final_lr_scale=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(50, TrainConfig(lr=2.0, warmup_steps=0)) == 2.0


def test_ema_decay_warms_up() -> None:
    assert ema_decay(0.999, 10, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10, 100) == pytest.approx(101 / 110)
    assert ema_decay(0.999, 10, 10**6) == 0.999 and ema_decay(0.99, 0, 0) == 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path: Path, precision: str) -> None:
    train_tiny(tmp_path, "--train.steps=4", f"--train.precision={precision}", "--train.device=cuda")
    meta, _ = read_state(tmp_path / "state.safetensors")
    assert (meta["scaler"] is not None) == (precision == "fp16")
    model = load_checkpoint(tmp_path / "ema.safetensors", device="cuda")
    assert model.sample(2, seed=0, label=[1, 2]).shape == (2, 8, 8, 1)


def test_an_unlabelled_run_reports_what_it_can_and_exits_0(tmp_path: Path) -> None:
    """--data.labels=false on digits trains an unconditional model; the final check still
    measures the loss, the bound and the FD (the judge learns the digits' own labels), with
    accuracy n/a because the model cannot be asked for a digit."""
    run = tmp_path / "unlabelled"
    train_tiny(run, "--data.labels=false", "--train.steps=2", "--log.eval_samples=20")
    cfg = read_checkpoint(run / "ema.safetensors")[0]
    assert cfg.num_classes is None and cfg.class_names is None and cfg.class_aliases == {}
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["accuracy"] is None
    assert np.isfinite(evals[0]["heldout_loss"]) and evals[0]["fd"] > 0 and evals[0]["floor"] > 0


def test_the_checkpoint_is_named_after_its_run(tmp_path: Path) -> None:
    """The served name is the run's, not the preset's (two runs of one preset differ);
    --model.name overrides it, and a resumed run keeps it."""
    train_tiny(tmp_path / "my-run", "--train.steps=1")
    assert read_checkpoint(tmp_path / "my-run" / "ema.safetensors")[0].name == "my-run"
    train_tiny(tmp_path / "other", "--train.steps=1", "--model.name=digits-v2")
    assert read_checkpoint(tmp_path / "other" / "ema.safetensors")[0].name == "digits-v2"
    train_tiny(tmp_path / "other", "--train.steps=2", resume=True)
    assert read_checkpoint(tmp_path / "other" / "ema.safetensors")[0].name == "digits-v2"


@pytest.mark.parametrize("command", [["train", *TINY_ARGS], ["eval", "--quick"]])
def test_without_the_train_extra_one_line_names_the_install(tmp_path: Path, command: list[str]) -> None:
    """scikit-learn made unimportable, as in an install without the train extra."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["sklearn"] = None  # any import of sklearn now raises ImportError
        import cli
        sys.exit(cli.main({[*command, "--run-dir" if command[0] == "train" else "--out", str(tmp_path / "x")]!r}))
    """)
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "needs scikit-learn" in lines[0] and "pip install -e '.[train]'" in lines[0]


def test_monitor_and_trainer_do_not_import_each_other_and_functions_stay_short() -> None:
    import ast

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert "trainer" not in imported(REPO / "training" / "monitor.py")
    long = []
    for path in sorted((REPO / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long
