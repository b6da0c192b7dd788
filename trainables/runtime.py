"""Process-level setup in one place: seeding, device choice, threads, CUDA speed switches, and what a process keeps between trials."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Iterator, TypeVar

import numpy as np
import torch

from trainables.config import TrainConfig

T = TypeVar("T")

# Loaded datasets and teachers kept for the next trial of a reused worker (Tune's reuse_actors):
# namespace -> key -> value, least recently used first.
_PROCESS_CACHES: dict[str, OrderedDict] = {}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is an error naming the key."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but no CUDA device is visible; use device=auto or cpu")
    return device


def setup_runtime(cfg: TrainConfig) -> torch.device:
    """Apply the config's runtime switches and return the training device."""
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed)
    return device


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA when amp is on; None (fp32) otherwise. bf16 needs no loss scaler."""
    return torch.bfloat16 if (cfg.amp and device.type == "cuda") else None


def rng_state() -> dict:
    """torch RNG states (CPU and CUDA) and python's, in a weights_only-loadable form."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Run a block without moving the global RNG streams (so a cached object and a freshly built one leave the same state)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def process_cached(namespace: str, key: Hashable, build: Callable[[], T], maxsize: int = 1) -> T:
    """build() once per process for `key`, keeping the `maxsize` most recent values of `namespace`.

    A reused Ray worker runs the next trial in the same process: its loaded dataset or teacher is
    found here instead of being read again. Values are shared, so callers must not modify them.
    """
    cache = _PROCESS_CACHES.setdefault(namespace, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    # Evict first: the old value (a teacher on the GPU, a dataset) is released before the new one loads.
    while len(cache) >= maxsize:
        cache.popitem(last=False)
    value = build()
    cache[key] = value
    return value


def clear_process_caches() -> None:
    """Forget every per-process cached dataset and teacher (tests; freeing memory)."""
    _PROCESS_CACHES.clear()


def file_identity(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """(absolute path, size, mtime_ns) of a file, None if it is missing: a cheap key that changes when the file does."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        return None
    return str(p), st.st_size, st.st_mtime_ns


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content, computed once per process per (path, size, mtime)."""
    identity = file_identity(path)
    if identity is None:
        raise FileNotFoundError(f"no file at {path}")

    def digest() -> str:
        with open(identity[0], "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    return process_cached("file_sha256", identity, digest, maxsize=8)
