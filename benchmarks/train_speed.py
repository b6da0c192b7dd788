"""Images/s of the device-resident data path vs a conventional DataLoader, and of one training step per method.

Run: python -m benchmarks.train_speed [--device auto|cpu|cuda] [--images N] [--batch-size B] [--repeats R]
     [--student NAME] [--teacher NAME] [--threads T] [--train-batches K] [--workers W]
Prints numbers only; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainables.config import TrainConfig
from trainables.data import DeviceLoader
from trainables.methods import METHODS
from trainables.models import build_model, list_models
from trainables.runtime import autocast_dtype, resolve_device, setup_runtime
from trainables.teachers import FrozenTeacher, TeacherSpec

CIFAR_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_test100.npz"
METHODS_TIMED = ("natural", "sat", "trades", "rslad")
NUM_CLASSES = 10


# --- helpers ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued device work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_median(fn: Callable[[int], int], device: torch.device, repeats: int) -> float:
    """Images/s of fn(repeat_index) -> images processed: 1 warm-up call, median of `repeats` timed calls."""
    fn(-1)
    sync(device)
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        n = fn(r)
        sync(device)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def cifar_shaped(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """n uint8 HWC 32x32x3 images and labels: the real CIFAR-10 sample tiled, or random pixels if absent."""
    if CIFAR_SAMPLE.is_file():
        blob = np.load(CIFAR_SAMPLE)
        reps = -(-n // len(blob["labels"]))
        images = np.tile(blob["images"], (reps, 1, 1, 1))[:n]
        labels = np.tile(blob["labels"], reps)[:n]
        return np.ascontiguousarray(images), labels.astype(np.int64), f"real CIFAR-10 ({CIFAR_SAMPLE.name}, 100 images tiled)"
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    return images, labels, f"random uint8 ({CIFAR_SAMPLE} not found)"


# --- 1. data path -------------------------------------------------------------------------
class HWCImages(torch.utils.data.Dataset):
    """The conventional CIFAR dataset: one uint8 HWC array per image, PIL + per-image transforms in __getitem__."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        import torchvision.transforms as T

        self.images = list(images)
        self.labels = labels.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def bench_data(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
               device: torch.device) -> dict[str, float]:
    """Images/s of one shuffled, augmented epoch: DeviceLoader vs DataLoader(PIL transforms) + .to(device)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    loader = DeviceLoader(x, y, batch_size=args.batch_size, device=device, shuffle=True, augment=True, seed=0)

    def device_epoch(epoch: int) -> int:
        n = 0
        for xb, yb in loader.epoch(epoch + 1):
            n += len(yb)
        return n

    pin = device.type == "cuda"
    baseline = torch.utils.data.DataLoader(HWCImages(images, labels), batch_size=args.batch_size, shuffle=True,
                                           num_workers=args.workers, pin_memory=pin,
                                           persistent_workers=args.workers > 0)

    def baseline_epoch(_: int) -> int:
        n = 0
        for xb, yb in baseline:
            xb, yb = xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)
            n += len(yb)
        return n

    return {"DeviceLoader": timed_median(device_epoch, device, args.repeats),
            "baseline": timed_median(baseline_epoch, device, args.repeats)}


# --- 2. training step ---------------------------------------------------------------------
def benchmark_spec(arch: str) -> TeacherSpec:
    """The teacher entry 'benchmark_<arch>' of the benchmarks: CIFAR-10, random weights (the same compute as trained ones)."""
    return TeacherSpec(name=f"benchmark_{arch}", arch=arch, dataset="cifar10", method="random", eps=8 / 255,
                       clean_acc=None, aa_acc=None, source="trained", notes="random weights, for timing only")


def random_teacher(arch: str, device: torch.device, channels_last: bool) -> FrozenTeacher:
    """A frozen, randomly initialised teacher: the same compute as a trained one, no weights file needed."""
    teacher = FrozenTeacher(build_model(arch, NUM_CLASSES, 3), benchmark_spec(arch)).to(device)
    return teacher.to(memory_format=torch.channels_last) if channels_last else teacher


def bench_method(method_name: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                 device: torch.device, amp: bool, channels_last: bool) -> float:
    """Images/s of run_epoch's inner loop (loader, method.loss, finite check, backward, SGD step) on k batches."""
    cfg = TrainConfig(method=method_name, student=args.student, device=str(device), amp=amp,
                      channels_last=channels_last, batch_size=args.batch_size, num_threads=args.threads)
    setup_runtime(cfg)  # seeds, threads, cudnn.benchmark / TF32 as a real run does
    cl = channels_last and device.type == "cuda"
    student = build_model(args.student, NUM_CLASSES, 3).to(device)
    if cl:
        student = student.to(memory_format=torch.channels_last)
    student.train()
    teacher = random_teacher(args.teacher, device, cl) if METHODS.get(method_name).needs_teacher else None
    method = METHODS.get(method_name)(cfg, autocast_dtype(cfg, device))
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    loader = DeviceLoader(x, y, batch_size=args.batch_size, device=device, shuffle=True, augment=True,
                          seed=cfg.epoch_order_seed, channels_last=cl)

    def steps(epoch: int) -> int:
        seen = 0
        total = torch.zeros((), device=device)
        for xb, yb in itertools.islice(loader.epoch(epoch + 1), args.train_batches):
            loss = method.loss(student, teacher, xb, yb, max(epoch, 0))
            torch.isfinite(loss).item()  # run_epoch's per-step finite check (a host sync); no raise here
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(yb)
            seen += len(yb)
        return seen

    return timed_median(steps, device, args.repeats)


def bench_training(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
                   device: torch.device) -> list[tuple[str, dict[str, float]]]:
    """Per-variant {method: images/s}; on CUDA the variants cover bf16 autocast and channels_last on/off."""
    n = args.batch_size * args.train_batches
    x = torch.from_numpy(images[:n]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels[:n])
    if device.type == "cuda":
        variants = [(amp, cl) for amp in (True, False) for cl in (True, False)]
    else:
        variants = [(False, False)]  # amp and channels_last only act on CUDA
    results = []
    for amp, cl in variants:
        label = f"amp={'bf16' if amp else 'off'} channels_last={'on' if cl else 'off'}" if device.type == "cuda" \
            else "fp32 (amp/channels_last are CUDA-only)"
        results.append((label, {m: bench_method(m, x, y, args, device, amp, cl) for m in METHODS_TIMED}))
    return results


# --- main ---------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 1")
    return value


def checked_device(p: argparse.ArgumentParser, name: str) -> torch.device:
    """--device resolved, or argparse's one-line usage error (exit 2)."""
    try:
        return resolve_device(name)
    except (RuntimeError, ValueError) as err:
        p.error(f"--device {name}: {err}")
        raise  # p.error exits; this line keeps type checkers content


def print_header(device: torch.device) -> None:
    """The lines every benchmark starts with: device, versions, threads and load."""
    import torchvision

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"device        : {device}{gpu}")
    print(f"torch         : {torch.__version__}  torchvision {torchvision.__version__}  python {platform.python_version()}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"threads       : torch {torch.get_num_threads()} / {os.cpu_count()} CPUs (load average {load})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults depend on the device (smaller on CPU to stay under ~1 minute)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--images", type=positive_int, default=10000, help="images in the data-path epoch (default 10000)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (median reported) after 1 warm-up")
    p.add_argument("--student", default=None, choices=list_models(),
                   help="student model (default: cnn_small on CPU, resnet18 on CUDA)")
    p.add_argument("--teacher", default=None, choices=list_models(),
                   help="rslad teacher arch, random weights (default: cnn_medium on CPU, wrn34_10 on CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--train-batches", type=int, default=None, help="batches per timed training repeat "
                                                                    "(default: 3 on CPU, 20 on CUDA)")
    p.add_argument("--workers", type=int, default=0, help="baseline DataLoader num_workers (default 0)")
    p.add_argument("--skip-data", action="store_true", help="skip the data-path benchmark")
    p.add_argument("--skip-train", action="store_true", help="skip the training-step benchmark")
    args = p.parse_args(argv)
    args.device = checked_device(p, args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run both benchmarks and print their tables."""
    args = parse_args(argv)
    device = args.device
    on_cuda = device.type == "cuda"
    args.student = args.student or ("resnet18" if on_cuda else "cnn_small")
    args.teacher = args.teacher or ("wrn34_10" if on_cuda else "cnn_medium")
    args.train_batches = args.train_batches or (20 if on_cuda else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, source = cifar_shaped(max(args.images, args.batch_size * args.train_batches))

    print_header(device)
    print(f"data          : {source}, 32x32x3, {args.images} images in the data-path epoch")
    print(f"settings      : batch {args.batch_size}, median of {args.repeats} repeats after 1 warm-up")

    if not args.skip_data:
        data = bench_data(images[:args.images], labels[:args.images], args, device)
        print("\n1. Data path: one shuffled epoch, RandomCrop(32, pad 4) + horizontal flip, batches on the device")
        print(f"   {'loader':<62} {'images/s':>12}")
        print(f"   {'DeviceLoader (uint8 on device, batched crop+flip)':<62} {data['DeviceLoader']:>12,.0f}")
        base = f"DataLoader(num_workers={args.workers}), PIL per-image transforms, .to(device)"
        print(f"   {base:<62} {data['baseline']:>12,.0f}")
        print(f"   ratio DeviceLoader / baseline: {data['DeviceLoader'] / data['baseline']:.1f}x")

    if not args.skip_train:
        cfg = TrainConfig()
        print(f"\n2. Training step (run_epoch loop: loss + backward + SGD), student {args.student}, "
              f"rslad teacher {args.teacher} (random weights, frozen)")
        print(f"   {args.train_batches} batches of {args.batch_size} per repeat; inner attack {cfg.attack_steps} PGD "
              f"steps, eps {cfg.eps:.4f}, rsl_source {cfg.rsl_source}")
        for label, rates in bench_training(images, labels, args, device):
            print(f"   [{label}]")
            print(f"   {'method':<10} {'images/s':>12} {'cost vs natural':>17}")
            for m, r in rates.items():
                print(f"   {m:<10} {r:>12,.0f} {rates['natural'] / r:>16.1f}x")


if __name__ == "__main__":
    main()
