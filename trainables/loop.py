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
from trainables.attacks import cross_entropy, model_mode, pgd
from trainables.config import TrainConfig
from trainables.data import DeviceLoader, ImageSplits, load_splits
from trainables.evaluate import accuracy_under
from trainables.methods import METHODS
from trainables.models import build_model
from trainables.runtime import autocast_dtype, rng_state, set_rng_state, setup_runtime

log = logging.getLogger(__name__)

STATE_FORMAT = 1


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
                                         seed=cfg.data_seed, channels_last=self.channels_last)
        self.val_loader = DeviceLoader(s.val_x, s.val_y, batch_size=cfg.val_batch_size, device=self.device,
                                       channels_last=self.channels_last)
        self.epoch = 0
        self.best: dict[str, Any] = {"epoch": 0, "val_pgd_acc": -math.inf, "metrics": {}, "model": None}
        self.history: list[dict[str, float]] = []
        if state is not None:
            self.load_state_dict(state)

    # --- construction -----------------------------------------------------------------
    def _prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _load_teacher(self) -> nn.Module:
        from trainables.teachers import build_teacher, default_checkpoint_path

        cfg = self.cfg
        path = cfg.teacher_checkpoint or default_checkpoint_path(cfg.teacher, Path(cfg.teachers_dir).expanduser().resolve())
        teacher = build_teacher(cfg.teacher, path, num_classes=self.splits.num_classes,
                                in_channels=self.splits.in_channels, device=self.device)
        return self._prepare(teacher)

    # --- the loop ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, float]]:
        while self.epoch < self.cfg.epochs:
            yield self.run_epoch()

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, validate, update best; returns the epoch's metrics."""
        cfg, epoch = self.cfg, self.epoch
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        start = time.perf_counter()
        total_loss = torch.zeros((), device=self.device)
        seen = 0
        for x, y in self.train_loader.epoch(epoch):
            loss = self.method.loss(self.model, self.teacher, x, y, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            # Summed on the device: one host sync per epoch instead of one per step.
            total_loss += loss.detach() * len(y)
            seen += len(y)
        # Checked once per epoch: a per-step check would wait for the GPU at every step.
        if not torch.isfinite(total_loss):
            raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1} (lr {lr}); lower train.lr")
        train_time = time.perf_counter() - start
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
        """Clean and PGD accuracy on the validation split (CE, uniform start, val_attack_steps, fp32, eval mode)."""
        cfg = self.cfg
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + self.epoch)
        batches = list(self.val_loader.epoch(0))
        with model_mode(self.model, "eval"):
            clean = accuracy_under(self.model, batches, lambda x, y: x)
            robust = accuracy_under(self.model, batches, lambda x, y: pgd(
                self.model, x, cross_entropy(y), eps=cfg.eps, step_size=cfg.attack_step_size,
                steps=cfg.val_attack_steps, start="uniform", generator=gen))
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
        if saved != self.cfg:
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
