"""The epoch loop: `for metrics in fit(cfg): ...` trains one model and yields one metrics dict per epoch."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from trainables import checkpoints
from trainables.attacks import model_mode
from trainables.config import TrainConfig
from trainables.data import DeviceLoader, ImageSplits, load_splits
from trainables.evaluate import accuracy_under, validation_attack
from trainables.gpu_usage import UtilisationSampler
from trainables.methods import METHODS
from trainables.models import build_model
from trainables.rsl_cache import (
    CUDA_GROUP_IMAGES,
    CachedTeacher,
    SoftLabelCache,
    cache_key,
    teacher_logits,
)
from trainables.runtime import (
    autocast_dtype,
    file_identity,
    file_sha256,
    process_cached,
    rng_state,
    rng_untouched,
    set_rng_state,
    setup_runtime,
)
from trainables.teachers import build_teacher, default_checkpoint_path, get_teacher

log = logging.getLogger(__name__)

STATE_FORMAT = 1
# Config keys that change where things are kept, not what is computed: a resume may differ in them.
RESUME_MAY_DIFFER = ("rsl_cache_dir",)


class Training:
    """One training run; iterate it for per-epoch metrics, call state_dict() between epochs to checkpoint."""

    def __init__(self, cfg: TrainConfig, state: dict | None = None, splits: ImageSplits | None = None) -> None:
        self.cfg = cfg
        self.device = setup_runtime(cfg)
        self.autocast = autocast_dtype(cfg, self.device)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.splits = splits if splits is not None else load_splits(cfg)
        s = self.splits
        self.arch = {"name": cfg.student, "num_classes": s.num_classes, "in_channels": s.in_channels}
        self.model = self._prepare(build_model(cfg.student, num_classes=s.num_classes, in_channels=s.in_channels))
        self.teacher = self._load_teacher() if cfg.uses_teacher else None
        self.method = METHODS.get(cfg.method)(cfg, self.autocast)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
        self.train_loader = DeviceLoader(s.train_x, s.train_y, batch_size=cfg.batch_size, device=self.device,
                                         shuffle=True, augment=cfg.augment, flip=cfg.dataset != "digits",
                                         seed=cfg.epoch_order_seed, channels_last=self.channels_last)
        self.val_loader = DeviceLoader(s.val_x, s.val_y, batch_size=cfg.val_batch_size, device=self.device,
                                       channels_last=self.channels_last)
        cached = self.teacher is not None and cfg.rsl_cache_dir and self.method.asks_teacher_on_clean()
        self.rsl_cache = self._soft_label_cache() if cached else None
        self.cached_teacher = CachedTeacher(self.teacher) if cached else None
        self.gpu_usage = UtilisationSampler(self.device)
        self.epoch = 0
        self.best: dict[str, Any] = {"epoch": 0, "val_pgd_acc": -math.inf, "metrics": {}, "model": None}
        self.history: list[dict[str, float]] = []
        if state is not None:
            self.load_state_dict(state)

    # --- construction -----------------------------------------------------------------
    def _prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _teacher_path(self) -> Path:
        cfg = self.cfg
        return Path(cfg.teacher_checkpoint or default_checkpoint_path(cfg.teacher, Path(cfg.teachers_dir).expanduser().resolve()))

    def _load_teacher(self) -> nn.Module:
        """The frozen teacher, kept per process (a reused worker's next trial skips the load)."""
        cfg, path = self.cfg, self._teacher_path()
        key = (cfg.teacher, file_identity(path), self.splits.num_classes, self.splits.in_channels, str(self.device),
               self.channels_last)

        def load() -> nn.Module:
            return self._prepare(build_teacher(cfg.teacher, path, num_classes=self.splits.num_classes,
                                               in_channels=self.splits.in_channels, device=self.device))

        # Building draws initial weights from the global RNG; a cached teacher would not, so neither may.
        with rng_untouched(self.device):
            return process_cached("teacher", key, load)

    def _soft_label_cache(self) -> SoftLabelCache:
        """The search-wide cache of this run's teacher logits on clean batches (see trainables.rsl_cache)."""
        cfg = self.cfg
        key = cache_key(cfg, teacher_arch=get_teacher(cfg.teacher).arch, teacher_sha256=file_sha256(self._teacher_path()),
                        train_fingerprint=self.splits.train_fingerprint, flip=self.train_loader.flip,
                        device=self.device, autocast_dtype=self.autocast, channels_last=self.channels_last)
        # The CPU answers batch by batch as training does (same numbers); a GPU is faster on larger batches.
        group = CUDA_GROUP_IMAGES if self.device.type == "cuda" else cfg.batch_size

        def compute(epoch: int, heartbeat) -> torch.Tensor:
            batches = (x for x, _ in self.train_loader.epoch(epoch))
            return teacher_logits(self.teacher, batches, self.autocast, group, heartbeat)

        return SoftLabelCache(cfg.rsl_cache_dir, key, len(self.splits.train_y), self.splits.num_classes, compute)

    # --- the loop ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, float]]:
        while self.epoch < self.cfg.epochs:
            yield self.run_epoch()

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, validate, update best; returns the epoch's metrics."""
        cfg, epoch = self.cfg, self.epoch
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        # The epoch's soft labels on clean batches, one row per image in loader order (None: the teacher runs).
        soft = self.rsl_cache.epoch_logits(epoch).to(self.device) if self.rsl_cache is not None else None
        teacher = self.teacher
        total_loss = torch.zeros((), device=self.device)
        seen = 0
        for x, y in self.train_loader.epoch(epoch):
            if soft is not None:
                teacher = self.cached_teacher.serve(x, soft[seen:seen + len(y)])
            loss = self.method.loss(self.model, teacher, x, y, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.method.after_step(self.model)
            # Summed on the device: one host sync per epoch instead of one per step.
            total_loss += loss.detach() * len(y)
            seen += len(y)
            self.gpu_usage.step()
        # Checked once per epoch: a per-step check would wait for the GPU at every step.
        if not torch.isfinite(total_loss):
            raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1} (lr {lr}); lower train.lr")
        train_time = time.perf_counter() - start
        gpu_util = self.gpu_usage.epoch_mean()  # training steps only, not validation
        self.scheduler.step()
        self.epoch += 1
        val_clean, val_pgd = self.validate()
        metrics = {
            "epoch": self.epoch,
            "schedule_pct": 100.0 * self.epoch / cfg.epochs,
            "train_loss": float(total_loss.item() / max(seen, 1)),
            "lr": lr,
            "val_clean_acc": val_clean,
            "val_pgd_acc": val_pgd,
            "epoch_time_s": time.perf_counter() - start,
            "images_per_s": seen / train_time if train_time > 0 else 0.0,
        }
        if self.rsl_cache is not None:
            # Cumulative over the run; a resumed run continues from its history.
            before = self.history[-1] if self.history else {}
            metrics["rsl_cache_computed"] = before.get("rsl_cache_computed", 0) + self.rsl_cache.computed
            metrics["rsl_cache_reused"] = before.get("rsl_cache_reused", 0) + self.rsl_cache.reused
            self.rsl_cache.computed = self.rsl_cache.reused = 0
        if on_cuda:
            metrics["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            metrics["gpu_mem_reserved_gb"] = torch.cuda.max_memory_reserved(self.device) / 2**30
            if gpu_util is not None:
                metrics["gpu_util_pct"] = gpu_util
        if val_pgd > self.best["val_pgd_acc"]:
            self.best = {"epoch": self.epoch, "val_pgd_acc": val_pgd, "metrics": dict(metrics),
                         "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}}
        metrics["best_val_pgd_acc"] = self.best["val_pgd_acc"]
        metrics["best_val_clean_acc"] = self.best["metrics"]["val_clean_acc"]
        metrics["best_epoch"] = self.best["epoch"]
        self.history.append(metrics)
        log.info("epoch %d/%d %s", self.epoch, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
        return metrics

    def validate(self) -> tuple[float, float]:
        """Clean and robust accuracy on the validation split under cfg.val_attack (fp32, eval mode)."""
        cfg = self.cfg
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + self.epoch)
        batches = list(self.val_loader.epoch(0))
        attack = validation_attack(cfg)
        with model_mode(self.model, "eval"):
            clean = accuracy_under(self.model, batches, lambda x, y: x)
            robust = accuracy_under(self.model, batches, lambda x, y: attack(self.model, x, y, cfg.eps, gen))
        return clean, robust

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: model, optimiser, scheduler, RNG, epoch, best, history."""
        return {
            "format": STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "arch": self.arch,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict(); the run's config must match the saved one."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"training state format {state.get('format')!r} is not {STATE_FORMAT}")
        saved = TrainConfig.from_dict(state["config"])
        if saved.replace(**{k: getattr(self.cfg, k) for k in RESUME_MAY_DIFFER}) != self.cfg:
            changed = sorted(k for k, v in saved.to_dict().items() if self.cfg.to_dict()[k] != v)
            raise ValueError(f"saved state was trained with a different config (keys: {', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.best = state["best"]
        self.history = list(state["history"])

    def model_files(self) -> dict[str, dict]:
        """The best and last model files (see trainables.checkpoints.model_file)."""
        last_metrics = self.history[-1] if self.history else {}
        files = {checkpoints.LAST_MODEL_FILE: checkpoints.model_file(
            {k: v.detach().cpu() for k, v in self.model.state_dict().items()}, self.cfg, self.arch,
            self.epoch, last_metrics)}
        if self.best["model"] is not None:
            files[checkpoints.BEST_MODEL_FILE] = checkpoints.model_file(
                self.best["model"], self.cfg, self.arch, self.best["epoch"], self.best["metrics"])
        return files


def fit(cfg: TrainConfig, state: dict | None = None) -> Iterator[dict[str, float]]:
    """Train per cfg (from `state` if given) and yield one metrics dict per epoch."""
    yield from Training(cfg, state)
