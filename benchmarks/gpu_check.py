"""bf16 autocast (train.amp) against fp32 on a GPU: the same short CIFAR-10 RSLAD run twice, numbers side by side.

Run on a CUDA machine with CIFAR-10 in torchvision's layout and the WRN-34-10 teacher's weights:

    python -m benchmarks.gpu_check --data-dir data --teachers-dir teachers [--epochs 5] [--train-subset 10000]

Prints, for amp off (fp32) and on (bf16): final validation clean and PGD accuracy, training images/s,
wall time, peak GPU memory and mean GPU utilisation while training (NVML; what MLflow records per epoch); then, on one batch of the trained fp32 student, the share of x' elements and the
relative size of the gradient difference that bf16 causes in one RSLAD step. On a machine without
CUDA it says so and exits 0 (amp does nothing on a CPU). Prints numbers only; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any, Sequence

import torch

from trainables.config import ConfigError, TrainConfig
from trainables.loop import Training
from trainables.methods import METHODS


def run(cfg: TrainConfig) -> tuple[dict[str, float], Training]:
    """Train cfg to the end; accuracy of the last epoch, median training images/s, wall time of the epochs (and the Training).

    The clock starts after Training(cfg): the first run reads the data and the teacher, the second finds them in
    the process's caches.
    """
    training = Training(cfg)
    start = time.perf_counter()
    history = list(training)
    wall = time.perf_counter() - start
    # The first epoch includes cuDNN's algorithm search: leave it out of the rate when there are others.
    rates = [m["images_per_s"] for m in history[1:] or history]
    last = history[-1]
    utilisation = [m["gpu_util_pct"] for m in history[1:] or history if "gpu_util_pct" in m]
    return {"val_clean_acc": last["val_clean_acc"], "val_pgd_acc": last["val_pgd_acc"],
            "images_per_s": statistics.median(rates), "wall_s": wall,
            "gpu_mem_peak_gb": last.get("gpu_mem_peak_gb", float("nan")),
            "gpu_util_pct": statistics.mean(utilisation) if utilisation else float("nan")}, training


def step_divergence(training: Training, cfg: TrainConfig) -> dict[str, float]:
    """One training step of cfg.method on the first batch, in fp32 and under bf16: x' elements changed, gradient change."""
    x, y = next(iter(training.train_loader.epoch(0)))
    # bf16 autocast as training uses it on CUDA (on a CPU, torch emulates it: same call, slower).
    bf16 = torch.bfloat16
    method_class = METHODS.get(cfg.method)
    recorded: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
    for dtype in (None, bf16):
        adversarial: list[torch.Tensor] = []

        class Recording(method_class):  # type: ignore[valid-type, misc]
            def attack(self, *args, **kwargs):
                adversarial.append(super().attack(*args, **kwargs))
                return adversarial[-1]

        model = copy.deepcopy(training.model).train()
        torch.manual_seed(cfg.seed)  # the same attack start for both
        loss = Recording(cfg, dtype).loss(model, training.teacher, x, y, epoch=0)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        recorded[dtype] = (adversarial[-1], torch.cat([g.float().flatten() for g in grads]))
    (x32, g32), (x16, g16) = recorded[None], recorded[bf16]
    return {"x_adv_elements_changed": float((x32 != x16).float().mean()),
            "grad_relative_change": float((g16 - g32).norm() / g32.norm())}


def compare_amp(cfg: TrainConfig) -> dict[str, Any]:
    """The run of cfg with amp off and on, and the one-step divergence on the fp32 run's student."""
    fp32, training = run(cfg.replace(amp=False))
    bf16, _ = run(cfg.replace(amp=True))
    return {"amp=false (fp32)": fp32, "amp=true (bf16)": bf16, "one step": step_divergence(training, cfg)}


def report(results: dict[str, Any], cfg: TrainConfig, device: str) -> str:
    """The numbers as a fixed-width table."""
    lines = [f"{device}: {cfg.method}, {cfg.student} <- {cfg.teacher}, {cfg.dataset} ({cfg.train_subset or 'all'} "
             f"training images, {cfg.epochs} epochs, batch {cfg.batch_size}, validation {cfg.val_size} images)",
             f"{'':<18} {'val clean':>10} {'val PGD':>10} {'images/s':>10} {'wall s':>9} {'peak GB':>8} {'GPU %':>6}"]
    for label in ("amp=false (fp32)", "amp=true (bf16)"):
        r = results[label]
        lines.append(f"{label:<18} {r['val_clean_acc']:>10.4f} {r['val_pgd_acc']:>10.4f} {r['images_per_s']:>10.0f} "
                     f"{r['wall_s']:>9.1f} {r['gpu_mem_peak_gb']:>8.2f} {r['gpu_util_pct']:>6.0f}")
    step = results["one step"]
    lines.append(f"one {cfg.method} step of the trained fp32 student under bf16: {100 * step['x_adv_elements_changed']:.2f} % "
                 f"of x' elements change, gradient changes by {100 * step['grad_relative_change']:.2f} % (relative L2)")
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="folder holding torchvision's cifar-10-batches-py")
    p.add_argument("--teachers-dir", default="teachers", help="folder holding <teacher>.pt")
    p.add_argument("--teacher", default="wrn34_10_trades")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--method", default="rslad", choices=[m for m in METHODS.names() if METHODS.get(m).attacks],
                   help="a method that crafts x' (the one-step comparison looks at its attack)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=10000, help="training images (0: all)")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda", help="a CUDA device, e.g. cuda or cuda:1")
    args = p.parse_args(argv)
    if not args.device.startswith("cuda"):
        p.error(f"--device {args.device}: amp acts only on CUDA; allowed: cuda, cuda:N")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure on CUDA; on a machine without it, say so and exit 0."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("benchmarks.gpu_check needs CUDA (torch.cuda.is_available() is False here): bf16 autocast only acts "
              "on a GPU, so there is nothing to compare on this machine")
        return 0
    try:
        cfg = TrainConfig.from_dict({
            "dataset": "cifar10", "data_dir": args.data_dir, "teachers_dir": args.teachers_dir,
            "teacher": args.teacher, "student": args.student, "method": args.method, "epochs": args.epochs,
            "train_subset": args.train_subset, "val_size": args.val_size, "batch_size": args.batch_size,
            "device": args.device})
        results = compare_amp(cfg)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(report(results, cfg, torch.cuda.get_device_name(torch.device(args.device))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
