"""One RSLAD training epoch three ways on the same images and initial weights: a reference-style loop, fit(), fit() + soft-label cache.

The reference-style loop is written the way the public RSLAD script (zibojia/RSLAD,
resnet18_rslad_cifar10.py) trains: a torch DataLoader over a Dataset with per-image PIL transforms
(RandomCrop(32, 4), flip, ToTensor), fp32 with cudnn.deterministic, the teacher called on every
batch under no_grad, the student attacked in eval mode with input gradients (10 sign steps on
KL(T(x) || S(x'))), then one SGD step on RSLAD's loss. fit() is Training.run_epoch
(device-resident data; on CUDA channels_last, and bf16 autocast with --amp on); the cached variant
reads each epoch's teacher logits from the soft-label cache (trainables.rsl_cache).

Run: python -m benchmarks.rslad_epoch [--device auto|cpu|cuda] [--student S] [--teacher T] [--images N]
     [--batch-size B] [--repeats R] [--workers W] [--threads K] [--rsl-source nat-nat-nat] [--amp off|on]
     [--channels-last on|off]
Defaults: resnet18 <- wrn34_10 on CUDA (10,000 images, 2 DataLoader workers as the public script);
cnn_small <- cnn_large on CPU (2,048 images, 1 thread, no workers). On the project's 2-core CPU cnn_large costs 21x cnn_small's FLOPs and 7-13x its forward
time (the run prints its own measurement), as WRN-34-10 costs ResNet-18 12x the FLOPs and 10x the CPU
forward time. Teachers have random weights: the compute is the same.
Prints numbers only; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.train_speed import (NUM_CLASSES, HWCImages, benchmark_spec, checked_device, cifar_shaped, positive_int,
                                    print_header, sync)
from trainables.attacks.objectives import kl_div_per_sample
from trainables.config import RSL_SOURCES, TrainConfig
from trainables.data import ImageSplits
from trainables.loop import Training
from trainables.methods import rslad_loss
from trainables.models import build_model, list_models
from trainables.teachers import TEACHERS, register_teacher, save_teacher_checkpoint


# --- the pair -----------------------------------------------------------------------------
def benchmark_teacher(arch: str) -> str:
    """A registry entry 'benchmark_<arch>' (CIFAR-10, random weights) so that TrainConfig accepts the teacher."""
    spec = benchmark_spec(arch)
    if spec.name not in TEACHERS.names():
        register_teacher(spec)
    return spec.name


def forward_costs(archs: list[str], device: torch.device, batch: int, repeats: int = 20) -> list[tuple[float, float]]:
    """(FLOPs per image, median seconds of one fp32 forward of `batch` images) per architecture, timed interleaved."""
    from torch.utils.flop_counter import FlopCounterMode

    models = [build_model(a, NUM_CLASSES, 3).to(device).eval() for a in archs]
    x = torch.rand(batch, 3, 32, 32, device=device)
    flops, times = [], [[] for _ in archs]
    with torch.no_grad():
        for model in models:
            with FlopCounterMode(display=False) as counter:
                model(x[:1])
            flops.append(counter.get_total_flops())
            model(x)
        # Interleaved, so that a change of load on a shared machine hits both alike.
        for _ in range(repeats):
            for model, samples in zip(models, times):
                sync(device)
                start = time.perf_counter()
                model(x)
                sync(device)
                samples.append(time.perf_counter() - start)
    return [(f, statistics.median(t)) for f, t in zip(flops, times)]


# --- 1. the reference-style loop ----------------------------------------------------------
def reference_epoch(student: nn.Module, teacher: nn.Module, loader: torch.utils.data.DataLoader,
                    optimizer: torch.optim.Optimizer, device: torch.device, cfg: TrainConfig) -> int:
    """One epoch as the public RSLAD script trains (fp32, teacher every batch under no_grad); returns images seen.

    The losses are the project's own helpers (the same maths); the timing is the loop's shape.
    """
    seen = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        with torch.no_grad():
            teacher_logits = teacher(x)
        target = F.softmax(teacher_logits, dim=1)
        student.eval()
        x_adv = x + 0.001 * torch.randn_like(x)
        for _ in range(cfg.attack_steps):
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss_kl = kl_div_per_sample(target, student(x_adv)).sum()
            grad = torch.autograd.grad(loss_kl, [x_adv])[0]
            x_adv = x_adv.detach() + cfg.attack_step_size * torch.sign(grad.detach())
            x_adv = torch.min(torch.max(x_adv, x - cfg.eps), x + cfg.eps).clamp(0.0, 1.0)
        student.train()
        optimizer.zero_grad()
        adv_logits = student(x_adv.detach())  # adversarial forward first, as the public script
        loss = rslad_loss(student(x), adv_logits, teacher_logits, None, cfg.alpha, "nat-nat-nat", cfg.kl_scale)
        loss.backward()
        optimizer.step()
        seen += len(x)
    return seen


# --- the comparison -------------------------------------------------------------------------
class _ForwardTimer:
    """Seconds spent inside a module's forward calls: wall clock on the CPU, CUDA events on a GPU (read once, at the end)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: list = []
        self.total = 0.0

    def before(self, module: nn.Module, args: tuple) -> None:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self.spans.append([start, None])
        else:
            self.spans.append([time.perf_counter(), None])

    def after(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans[-1][1] = end
        else:
            self.total += time.perf_counter() - self.spans.pop()[0]

    def seconds(self) -> float:
        """Total time in the forward calls so far."""
        if self.cuda:
            torch.cuda.synchronize()
            self.total += sum(start.elapsed_time(end) / 1000 for start, end in self.spans if end is not None)
            self.spans.clear()
        return self.total


class Bench:
    """The shared images, initial weights and configs of the three variants."""

    def __init__(self, args: argparse.Namespace, device: torch.device, folder: Path) -> None:
        self.args, self.device = args, device
        images, labels, self.source = cifar_shaped(args.images)
        self.images_hwc, self.labels = images, labels
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(labels)
        n_val = min(len(y), args.batch_size)
        self.splits = ImageSplits(x, y, x[:n_val], y[:n_val], x[:n_val], y[:n_val], NUM_CLASSES)
        torch.manual_seed(0)
        teacher = build_model(args.teacher, NUM_CLASSES, 3)
        self.teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}  # the reference's copy
        self.teacher_file = save_teacher_checkpoint(teacher, folder / "teacher.pt", benchmark_teacher(args.teacher), {})
        self.cache_dir = folder / "rsl_cache"
        self.cfg = TrainConfig.from_dict(dict(
            dataset="cifar10", student=args.student, teacher=benchmark_teacher(args.teacher),
            teacher_checkpoint=str(self.teacher_file), method="rslad", rsl_source=args.rsl_source,
            batch_size=args.batch_size, epochs=1, device=str(device), num_threads=args.threads,
            val_attack_steps=1, val_batch_size=args.batch_size, amp=args.amp == "on",
            channels_last=args.channels_last == "on"))

    def fit_epoch(self, cached: bool) -> tuple[float, dict]:
        """Images/s of one Training.run_epoch (its training part, validation excluded) and its metrics.

        A fresh Training each time (same seed, so the same initial student); its construction is not timed.
        """
        cfg = self.cfg.replace(rsl_cache_dir=str(self.cache_dir)) if cached else self.cfg
        splits = self.splits
        training = Training(cfg, splits=splits)
        # Time inside the teacher's forward, measured within the same epoch: a share robust to the load drifting
        # between epochs. On CUDA, events (no synchronisation: a sync per call would stall the queue it measures).
        timer = _ForwardTimer(self.device)
        hooks = [training.teacher.register_forward_pre_hook(timer.before),
                 training.teacher.register_forward_hook(timer.after)]
        try:
            metrics = training.run_epoch()
        finally:
            for h in hooks:
                h.remove()  # the teacher is kept per process and shared with the next Training
        train_time = len(splits.train_y) / metrics["images_per_s"]  # run_epoch's training part, validation excluded
        metrics["teacher_share"] = timer.seconds() / train_time
        return metrics["images_per_s"], metrics

    def reference(self) -> float:
        """Images/s of one reference-style epoch (DataLoader construction and worker start-up included, as per epoch there)."""
        args, device = self.args, self.device
        torch.manual_seed(self.cfg.seed)
        student = build_model(args.student, NUM_CLASSES, 3).to(device)
        teacher = build_model(args.teacher, NUM_CLASSES, 3)
        teacher.load_state_dict(self.teacher_state)
        teacher = teacher.to(device).eval()
        cfg = self.cfg
        optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        backends = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        # The public script sets cudnn.deterministic and otherwise keeps PyTorch's defaults (no cudnn.benchmark,
        # TF32 for convolutions only); fit() sets its own switches, so these are put back afterwards.
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
        try:
            sync(device)
            start = time.perf_counter()
            loader = torch.utils.data.DataLoader(HWCImages(self.images_hwc, self.labels), batch_size=args.batch_size,
                                                 shuffle=True, num_workers=args.workers,
                                                 pin_memory=device.type == "cuda")
            seen = reference_epoch(student, teacher, loader, optimizer, device, cfg)
            sync(device)
            return seen / (time.perf_counter() - start)
        finally:
            (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = backends


def run(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, list[float]], list[float]]:
    """Warm up, then time `repeats` interleaved epochs of each variant.

    Returns images/s samples per variant and the teacher's share of each timed fit() epoch.
    """
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(args, device, Path(folder))
        print(f"data          : {bench.source}, {args.images} images per epoch, batch {args.batch_size}")
        # Whole untimed epochs: every batch shape (the last one is smaller) meets cudnn.benchmark's search here.
        bench.reference()
        bench.fit_epoch(cached=False)
        rates: dict[str, list[float]] = {"reference": [], "fit": [], "fit_cache_cold": [bench.fit_epoch(cached=True)[0]],
                                         "fit_cache_warm": []}  # the first cached epoch computes the soft labels
        shares = []
        variants = ["reference", "fit", "fit_cache_warm"]
        for r in range(args.repeats):
            for name in variants[r % 3:] + variants[:r % 3]:  # rotate the order against drift
                if name == "reference":
                    rates[name].append(bench.reference())
                else:
                    rate, metrics = bench.fit_epoch(cached=name == "fit_cache_warm")
                    rates[name].append(rate)
                    if name == "fit":
                        shares.append(metrics["teacher_share"])
        return rates, shares


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults depend on the device."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--student", default=None, choices=list_models(),
                   help="student model (default: resnet18 on CUDA, cnn_small on CPU)")
    p.add_argument("--teacher", default=None, choices=list_models(),
                   help="teacher architecture, random weights (default: wrn34_10 on CUDA, cnn_large on CPU)")
    p.add_argument("--images", type=positive_int, default=None,
                   help="images per epoch (default: 10000 on CUDA, 2048 on CPU)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed epochs per variant, interleaved (median reported)")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader num_workers (default: 2 on CUDA "
                                                             "as the public script, 0 on CPU, where a trial has one core)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU, torch's on CUDA)")
    p.add_argument("--rsl-source", default="nat-nat-nat", choices=RSL_SOURCES,
                   help="RSLAD soft-label source of the fit() variants")
    p.add_argument("--amp", choices=("on", "off"), default="off",
                   help="fit()'s bf16 autocast on CUDA (train.amp, off by default)")
    p.add_argument("--channels-last", choices=("on", "off"), default="on",
                   help="fit()'s channels_last on CUDA (train.channels_last)")
    args = p.parse_args(argv)
    args.device = checked_device(p, args.device)
    return args


def fit_numerics(args: argparse.Namespace) -> str:
    """How fit() runs on CUDA with these options, for the header."""
    return " + ".join([("bf16 autocast" if args.amp == "on" else "fp32"),
                       *(["channels_last"] if args.channels_last == "on" else [])])


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print images/s and ratios."""
    args = parse_args(argv)
    device = args.device
    on_cuda = device.type == "cuda"
    args.student = args.student or ("resnet18" if on_cuda else "cnn_small")
    args.teacher = args.teacher or ("wrn34_10" if on_cuda else "cnn_large")
    args.images = args.images or (10000 if on_cuda else 2048)
    args.workers = args.workers if args.workers is not None else (2 if on_cuda else 0)
    args.threads = args.threads if args.threads is not None else (0 if on_cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)

    print_header(device)
    (s_flops, s_time), (t_flops, t_time) = forward_costs([args.student, args.teacher], device, args.batch_size)
    print(f"pair          : student {args.student} ({s_flops / 1e6:,.0f} MFLOP/image), teacher {args.teacher} "
          f"({t_flops / 1e6:,.0f} MFLOP/image): teacher/student {t_flops / s_flops:.1f}x FLOPs, "
          f"{t_time / s_time:.1f}x forward time (fp32, batch {args.batch_size})")
    cfg = TrainConfig()
    print(f"method        : rslad {args.rsl_source}, {cfg.attack_steps} PGD steps; fit() "
          f"{fit_numerics(args) if on_cuda else 'fp32'}; reference fp32, DataLoader(num_workers={args.workers})")
    rates, shares = run(args, device)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    labels = {"reference": "reference-style loop (DataLoader + PIL, fp32, teacher every batch)",
              "fit": "fit() (Training.run_epoch)",
              "fit_cache_cold": "fit() + soft-label cache, cold (computes the epoch; 1 sample)",
              "fit_cache_warm": "fit() + soft-label cache, warm (reads the epoch)"}
    print(f"\n   {'variant':<66} {'images/s':>10} {'50k epoch s':>12} {'vs reference':>13}   samples")
    for key, label in labels.items():
        if key in med:
            samples = " ".join(f"{v:,.0f}" for v in rates[key])
            print(f"   {label:<66} {med[key]:>10,.0f} {50000 / med[key]:>12,.1f} {med[key] / med['reference']:>12.2f}x   {samples}")
    if "fit_cache_warm" in med:
        print(f"   cache warm / fit(): {med['fit_cache_warm'] / med['fit']:.2f}x")
    share = statistics.median(shares)
    print(f"   teacher forward share of a fit() training epoch (timed inside the epoch; median of "
          f"{', '.join(f'{v:.1%}' for v in shares)}): {share:.1%}, "
          f"so a warm cache can give at most {1 / (1 - share):.2f}x")


if __name__ == "__main__":
    main()
