"""The ``ddpm`` command: argument parsing only; each subcommand calls into model/, training/ or app/.

It stands above the three packages so that neither app/ nor training/ imports the other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# Before torch (and its OpenMP runtime) is loaded by any subcommand: idle OpenMP threads sleep
# instead of spinning. Spinning wins a few percent on dedicated cores, but wherever the cores
# are shared (a container's CPU quota, a neighbour process, our own server threads) a spinning
# team steals the core its straggler needs (docs/benchmarks.md, "Threads and OpenMP").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _convert(args: argparse.Namespace) -> int:
    from model.convert import convert_diffusers

    config = convert_diffusers(args.src, args.out, allow_pickle=args.allow_pickle, name=args.name)
    print(f"wrote {args.out}: {config.name}, {config.image_size}x{config.image_size}x{config.channels}, "
          f"T={config.diffusion.num_timesteps}, {config.diffusion.schedule} schedule")
    return 0


def _export(args: argparse.Namespace) -> int:
    """The checkpoint's denoiser as a checked ONNX graph, with the same outputs as the PyTorch network."""
    from model import load_checkpoint
    from model.runtimes.export import OnnxUnavailable, export_onnx, write_onnx

    model = load_checkpoint(args.checkpoint, device="cpu", dtype="float32")
    try:
        data = export_onnx(model.unet, model.config)
    except OnnxUnavailable as exc:
        print(f"ddpm export: error: {exc}", file=sys.stderr)
        return 2
    write_onnx(args.out, data)
    inputs = "x, t, labels" if model.config.num_classes else "x, t"
    print(f"wrote {args.out}: {model.config.name}, inputs {inputs} (dynamic batch), output out, "
          f"{len(data) / 1e6:.1f} MB, checked with onnx.checker")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from model import load_checkpoint
    from model.device import configure_threads, resolve_device
    from model.images import write_samples

    device = resolve_device(args.device, "--device")
    model = load_checkpoint(args.checkpoint, device=device, dtype=args.dtype, runtime=args.runtime)
    configure_threads(None, model.gflops_per_image)  # as the server does
    images = model.sample(
        args.n, steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
        label=args.label, guidance=args.guidance, batch_size=args.batch_size, progress=True,
    )
    paths = write_samples(images, args.out, [args.seed + i for i in range(args.n)], scale=args.scale)
    print(f"wrote {len(paths) - 1} images and {paths[-1]}")
    return 0


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from training.cli import train_main

    return train_main(args, overrides)


def _eval(args: argparse.Namespace) -> int:
    from training.cli import eval_main

    return eval_main(args)


def _serve(args: argparse.Namespace) -> int:
    from app.main import serve

    return serve(host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    from model.device import DTYPE_CHOICES
    from model.modes import SAMPLERS
    from model.runtimes import RUNTIMES

    parser = argparse.ArgumentParser(prog="ddpm", description="DDPM training, sampling and serving")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="import a diffusers-format DDPM folder as a .safetensors checkpoint")
    p.add_argument("src", help="folder with unet/config.json, unet/diffusion_pytorch_model.safetensors, "
                               "scheduler/scheduler_config.json")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--name", help="model name recorded in the checkpoint (default: the folder's name)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept diffusion_pytorch_model.bin, read with torch.load(weights_only=True)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("export", help="export a checkpoint's denoiser (ONNX) for other runtimes and servers",
                       description="The network as ONNX: inputs x (N,C,H,W) float32, t (N,) int64 and, for a "
                                   "class-conditional model, labels (N,) int64 (num_classes is the null label of "
                                   "classifier-free guidance); output out (N,C,H,W); N dynamic; the checkpoint's "
                                   "config in the metadata. Needs the onnx extra.")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the only format so far")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a .safetensors checkpoint (default: the embedded model)")
    p.add_argument("out", help="output file, e.g. model.onnx")
    p.set_defaults(func=_export)

    p = sub.add_parser("sample", help="write sample PNGs and a grid from a checkpoint")
    p.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint (default: the embedded model)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=None, help="network evaluations (default: the model's)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the model's")
    p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--label", type=int, default=None, help="class, for a class-conditional model")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight w >= 0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNGs by this factor (nearest neighbour)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the network; auto picks as the server does (DDPM_RUNTIME)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="the network's precision; auto picks as the server does (DDPM_DTYPE)")
    p.add_argument("--out", default="samples", help="output directory")
    p.set_defaults(func=_sample)

    p = sub.add_parser(
        "train", help="train a model; extra --key=value pairs override the config",
        description="Train a DDPM. The config starts from a preset (digits, tiny, cifar10) or a JSON/TOML file; "
                    "dotted --key=value pairs override it, e.g. --model.unet.base_channels=64 --train.lr=2e-4. "
                    "Scale out with torchrun: torchrun --nproc_per_node=N -m cli train ...",
    )
    p.add_argument("--config", default=None, help="a preset name (default: digits) or a .json/.toml config file")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last state")
    p.add_argument("--run-dir", default=None, help="where checkpoints, samples and metrics go (default: runs/NAME)")
    p.set_defaults(func=_train, takes_overrides=True)

    p = sub.add_parser("eval", help="bits/dim on held-out data and, for digits, the sample-quality table")
    p.add_argument("--checkpoint", default=None, help="default: the embedded model")
    p.add_argument("--out", default="eval", help="directory for report.json, report.md and sample grids")
    p.add_argument("--quick", action="store_true", help="fewer samples and held-out images (a smoke check)")
    p.add_argument("--samples", type=int, default=None, help="images generated per row (default 1000; quick 50)")
    p.add_argument("--bpd-images", type=int, default=None, help="held-out images for the bound (default all)")
    p.add_argument("--guidance", default=None, help="extra rows at the default sampler with these weights, e.g. 0,1,2")
    p.add_argument("--rows", default=None, help="SAMPLER:STEPS,... instead of ddpm:1000,ddim:50,ddim:20,ddim:10,"
                                                "dpmpp_2m:20,dpmpp_2m:10")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="sample i of a row uses seed + i")
    p.add_argument("--dataset", default=None, help="held-out data set, when the checkpoint does not record one")
    p.add_argument("--data-path", default=None, help="its path (folder, .npz or CIFAR-10 directory)")
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", default="torch", choices=RUNTIMES,
                   help="what runs the network (default torch, the reference; auto picks as the server does)")
    p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                   help="the network's precision (default float32, exact)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("serve", help="run the HTTP server (settings from DDPM_* environment variables)")
    p.add_argument("--host", default=None, help="default: DDPM_HOST or 0.0.0.0")
    p.add_argument("--port", type=int, default=None, help="default: DDPM_PORT or 8000")
    p.set_defaults(func=_serve)
    return parser


def _install_hint(module: str | None) -> str:
    """The command that installs a missing package, for the packages an extra provides."""
    extras = {"sklearn": "pip install -e '.[train]'", "diffusers": "pip install -e '.[test]'"}
    return extras.get((module or "").split(".")[0], "pip install -e .")


def main(argv: Sequence[str] | None = None) -> int:
    """Every error a user can fix ends in one line on stderr and exit status 2, no traceback:
    config, checkpoint and conversion errors (ValueErrors that name what is wrong) and a
    missing optional package (named with the command that installs it)."""
    from model import CheckpointError, ConfigError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    takes_overrides = getattr(args, "takes_overrides", False)
    if extra and not takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra) if takes_overrides else args.func(args))
    except ValueError as exc:
        # A long training run's other ValueErrors are bugs: they keep their traceback.
        if takes_overrides and not isinstance(exc, ConfigError | CheckpointError):
            raise
        print(f"ddpm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"ddpm {args.command}: error: the Python package {exc.name!r} is not installed; "
              f"{_install_hint(exc.name)} installs it", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
