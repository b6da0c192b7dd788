"""Robust soft labels computed once per search: the teacher's logits on each epoch's clean batches, shared through a folder.

Epoch e's order and augmentation depend only on (epoch_order_seed, e) and the batch size (see
DeviceLoader.epoch), so every trial that shares the teacher, the training images and those
settings asks the teacher the same questions on clean inputs. The first trial that reaches an
epoch computes that epoch's logits (inference only, under the run's autocast) and writes them
atomically; every other trial reads them. Terms that need the teacher on x' still run it.

Logits, not probabilities, are stored: every method takes the teacher's logits (ARD divides them by
its temperature before the softmax), and fp16 probabilities would flush small ones to zero, while
fp16 logits keep a relative error of 2^-11 everywhere. On CUDA with bf16 autocast, fp16 holds
every bf16 logit of magnitude 6e-5..65504 exactly.

Layout: <folder>/<key digest>/key.json (what the key holds, for people), epoch_00000.pt (written
through a temporary file and os.replace), epoch_00000.lock (held while one trial computes).

A folder given as a URI (the search's object storage, s3://...) is shared through a node-local folder
filled from it: an epoch is read from the node's folder, else downloaded from the URI, else computed
(one trial per node at a time) and uploaded (an object store's put is atomic). Trials on two nodes
may compute the same epoch at once; both write the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from trainables.files import atomic_save, atomic_write, exists, read_bytes, write_bytes
from trainables.paths import is_uri
from trainables.shipping import node_cache

log = logging.getLogger(__name__)

FORMAT = 1
STALE_LOCK_S = 120.0
"""A lock whose holder has not touched it for this long (or whose process is gone) is taken over."""
HEARTBEAT_S = 5.0
CUDA_GROUP_IMAGES = 1024
"""On CUDA the teacher answers several training batches at once; on the CPU it sees the training batches as they are."""

Heartbeat = Callable[[], None]


def key_digest(key: dict[str, Any]) -> str:
    """A short stable digest of a cache key (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _checksum(logits: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(logits.contiguous().view(torch.int16).numpy()).cast("B")).hexdigest()


class SoftLabelCache:
    """Per-epoch teacher logits (fp16, one row per training image in loader order) shared by every trial with the same key."""

    def __init__(self, folder: str | os.PathLike, key: dict[str, Any], rows: int, classes: int,
                 compute: Callable[[int, Heartbeat], torch.Tensor], *, stale_lock_s: float = STALE_LOCK_S,
                 poll_s: float = 0.2) -> None:
        self.key = key
        self.digest = key_digest(key)
        self.remote = f"{str(folder).rstrip('/')}/{self.digest}" if is_uri(str(folder)) else None
        """Where the epochs are shared when the folder is a URI (the local folder is then this node's copy)."""
        local = node_cache() / "rsl_cache" / hashlib.sha256(str(folder).encode()).hexdigest()[:16] if self.remote \
            else Path(folder).expanduser().resolve()
        self.folder = local / self.digest
        self._shared: set[int] = set()  # epochs known to be at the remote URI
        self.rows, self.classes = rows, classes
        self.compute = compute
        self.stale_lock_s = stale_lock_s
        self.poll_s = poll_s
        self.computed = 0
        """Epochs this process computed."""
        self.reused = 0
        """Epochs this process read from the cache."""

    def path(self, epoch: int) -> Path:
        """The file holding epoch `epoch`'s logits."""
        return self.folder / f"epoch_{epoch:05d}.pt"

    # --- reading and writing ----------------------------------------------------------------
    def read(self, epoch: int) -> torch.Tensor | None:
        """The epoch's logits if a complete, matching file is there (on this node, else at the remote URI, copied
        here); None otherwise (missing, torn, or another key's)."""
        path = self.path(epoch)
        if path.is_file():
            self._share(epoch)
        elif not self._download(epoch):
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            logits = blob["logits"]
            ok = (blob["format"] == FORMAT and blob["key"] == self.digest and blob["epoch"] == epoch
                  and isinstance(logits, torch.Tensor) and logits.dtype == torch.float16
                  and tuple(logits.shape) == (self.rows, self.classes) and blob["checksum"] == _checksum(logits))
        except Exception as exc:  # a torn or foreign file fails torch.load in many ways; all mean "not usable"
            log.warning("soft-label cache %s unreadable (%s: %s); computing it again", path, type(exc).__name__, exc)
            return None
        if not ok:
            log.warning("soft-label cache %s does not match this run's key or shape; computing it again", path)
            return None
        return logits

    def write(self, epoch: int, logits: torch.Tensor) -> None:
        """Write the epoch's logits atomically: a temporary file in the same folder, then os.replace."""
        logits = logits.detach().to("cpu", torch.float16).contiguous()
        if tuple(logits.shape) != (self.rows, self.classes):
            raise ValueError(f"soft labels of shape {tuple(logits.shape)}, expected {(self.rows, self.classes)}")
        key_file = self._key_file()
        # No fsync: a file torn by a power loss fails its checksum on read and is computed again.
        atomic_save({"format": FORMAT, "key": self.digest, "epoch": epoch, "logits": logits,
                     "checksum": _checksum(logits)}, self.path(epoch))
        if self.remote:
            self._upload(key_file)
            self._upload(self.path(epoch))
            self._shared.add(epoch)

    def _key_file(self) -> Path:
        """key.json beside the epochs (what the key holds, for people), written once."""
        key_file = self.folder / "key.json"
        if not key_file.exists():
            text = json.dumps(self.key, sort_keys=True, indent=1).encode()
            atomic_write(key_file, lambda f: f.write(text))
        return key_file

    def _download(self, epoch: int) -> bool:
        """Copy epoch `epoch`'s file from the remote URI into this node's folder; False when there is none."""
        if not self.remote:
            return False
        try:
            data = read_bytes(f"{self.remote}/{self.path(epoch).name}")
        except OSError as err:  # a store that does not answer now: this node computes the epoch instead
            log.warning("soft-label cache %s unreadable (%s); computing epoch %d here", self.remote, err, epoch)
            return False
        if data is None:
            return False
        atomic_write(self.path(epoch), lambda f: f.write(data))
        self._shared.add(epoch)
        return True

    def _share(self, epoch: int) -> None:
        """Upload an epoch this node has (from an earlier search with the same key) when the remote URI lacks it."""
        if not self.remote or epoch in self._shared:
            return
        if not exists(f"{self.remote}/{self.path(epoch).name}"):
            self._upload(self._key_file())
            self._upload(self.path(epoch))
        self._shared.add(epoch)

    def _upload(self, path: Path) -> None:
        write_bytes(f"{self.remote}/{path.name}", path.read_bytes())

    # --- the lazy, locked computation -------------------------------------------------------
    def epoch_logits(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s logits (fp16, CPU): read when present, else computed here (one trial at a time) and stored."""
        lock = self.folder / f"epoch_{epoch:05d}.lock"
        while True:
            logits = self.read(epoch)
            if logits is not None:
                self.reused += 1
                return logits
            if self._acquire(lock):
                try:
                    # Another trial may have finished between our read and our lock.
                    logits = self.read(epoch)
                    if logits is not None:
                        self.reused += 1
                        return logits
                    logits = self.compute(epoch, self._heartbeat(lock)).to("cpu", torch.float16)
                    self.write(epoch, logits)
                    self.computed += 1
                    return logits
                finally:
                    lock.unlink(missing_ok=True)
            if self._stale(lock):
                log.warning("soft-label cache lock %s is stale; taking it over", lock)
                lock.unlink(missing_ok=True)  # a duplicate computation after a race is harmless: writes are atomic
                continue
            time.sleep(self.poll_s)

    def _acquire(self, lock: Path) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
        return True

    def _heartbeat(self, lock: Path) -> Heartbeat:
        last = [time.monotonic()]

        def beat() -> None:
            now = time.monotonic()
            if now - last[0] >= HEARTBEAT_S:
                last[0] = now
                try:
                    os.utime(lock)
                except OSError:
                    pass
        return beat

    def _stale(self, lock: Path) -> bool:
        """A lock is stale when untouched for stale_lock_s, or when its holder on this host is gone."""
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: the next read finds the file
        if age > self.stale_lock_s:
            return True
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            return False  # being written right now, or released: only its age can tell
        if isinstance(holder, dict) and holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _process_alive(holder["pid"])
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def teacher_logits(teacher: nn.Module, batches: Iterable[torch.Tensor], autocast_dtype: torch.dtype | None,
                   group_images: int, heartbeat: Heartbeat = lambda: None) -> torch.Tensor:
    """The teacher's logits on every batch, in order, as one fp16 CPU tensor; batches are joined up to group_images at a time."""
    out: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        x = pending[0] if len(pending) == 1 else torch.cat(pending)
        pending.clear()
        with torch.inference_mode():
            if autocast_dtype is None:
                logits = teacher(x)
            else:
                with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                    logits = teacher(x)
        out.append(logits.to(torch.float16))
        heartbeat()

    for x in batches:
        pending.append(x)
        if sum(len(p) for p in pending) >= group_images:
            flush()
    if pending:
        flush()
    return torch.cat(out).cpu()


class CachedTeacher(nn.Module):
    """The teacher, except that called on the exact clean batch the loop handed to the method it answers from the cache.

    Methods call the teacher through Method.forward on the very tensor the loop gave them; any
    other input (x', a copy, a batch changed in place) runs the real teacher.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self._x: torch.Tensor | None = None
        self._version = -1
        self._logits: torch.Tensor | None = None

    def serve(self, x: torch.Tensor, logits: torch.Tensor) -> "CachedTeacher":
        """Answer calls on `x` (this very tensor, unmodified) with `logits`; returns self for the method."""
        if logits.shape[0] != x.shape[0]:
            raise ValueError(f"cached soft labels for {logits.shape[0]} images, batch has {x.shape[0]}")
        self._x, self._version, self._logits = x, x._version, logits
        return self

    def train(self, mode: bool = True) -> "CachedTeacher":
        """Ignored, like the frozen teacher's."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cached logits for the served batch (in the dtype the teacher would return), else the real teacher's."""
        if x is self._x and x._version == self._version and self._logits is not None:
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
            return self._logits.to(dtype, copy=True)
        return self.teacher(x)


def cache_key(cfg: Any, *, teacher_arch: str, teacher_sha256: str, train_fingerprint: str, flip: bool,
              device: torch.device, autocast_dtype: torch.dtype | None, channels_last: bool) -> dict[str, Any]:
    """Everything that changes the teacher's answers on an epoch's clean batches (cfg is a TrainConfig)."""
    return {
        "format": FORMAT,
        "teacher": cfg.teacher, "teacher_arch": teacher_arch, "teacher_sha256": teacher_sha256,
        # The training images' content covers dataset, data_dir files, val_size, train_subset and the split seed;
        # the named settings are kept for people reading key.json.
        "dataset": cfg.dataset, "val_size": cfg.val_size, "train_subset": cfg.train_subset,
        "train_images_sha256": train_fingerprint,
        "data_seed": cfg.data_seed, "order_seed": cfg.epoch_order_seed,
        "augment": cfg.augment, "flip": flip, "batch_size": cfg.batch_size,
        "device": device.type, "autocast": str(autocast_dtype), "channels_last": channels_last,
        "torch": torch.__version__,
    }
