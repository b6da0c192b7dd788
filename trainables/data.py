"""Datasets as uint8 tensors, a seeded validation split, and a device-resident loader with batched augmentation."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import TrainConfig
from trainables.errors import UserError
from trainables.runtime import file_identity, process_cached

log = logging.getLogger(__name__)

# digits has no official test split: a fixed 20 % (seed 0, independent of data_seed) keeps
# the test set identical across trials whatever their data_seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not in data_dir and downloading was not asked for."""


@dataclass
class ImageSplits:
    """uint8 images (N, C, H, W) and int64 labels for train / validation / test, on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        """Channels of every image."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width) of every image."""
        return int(self.train_x.shape[2])

    @cached_property
    def train_fingerprint(self) -> str:
        """sha256 of the training images and labels (shapes included): the identity of what every epoch is drawn from."""
        h = hashlib.sha256(f"{tuple(self.train_x.shape)} {tuple(self.train_y.shape)}".encode())
        for t in (self.train_x, self.train_y):
            h.update(memoryview(t.contiguous().numpy()).cast("B"))
        return h.hexdigest()


def cifar_class(name: str) -> type:
    """torchvision's dataset class of cifar10 or cifar100 (its file list, checksums and folder name)."""
    import torchvision

    return {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]


def _cifar_not_found(name: str, root: Path, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} not found in {root} ({why}); set train.download=true on a machine with internet, "
        f"or copy torchvision's '{cifar_class(name).base_folder}' folder there (train.data_dir=...)")


def check_cifar_files(name: str, data_dir: str | Path) -> None:
    """torchvision's CIFAR files are in data_dir and intact, read once for their checksums (not unpickled)."""
    from torchvision.datasets.utils import check_integrity

    cls = cifar_class(name)
    root = Path(data_dir).expanduser().resolve()
    for filename, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]:
        path = root / cls.base_folder / filename
        problem = "missing" if not path.is_file() else None if check_integrity(str(path), md5) else "corrupt"
        if problem:
            raise _cifar_not_found(name, root, f"{path} is {problem}")


def load_cifar(name: str, data_dir: str | Path, download: bool = False) -> tuple[torch.Tensor, ...]:
    """CIFAR-10/100 train and test as uint8 NCHW tensors, read by torchvision from data_dir."""
    cls = cifar_class(name)
    root = Path(data_dir).expanduser().resolve()
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise _cifar_not_found(name, root, str(err)) from None

    def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    return (*as_tensors(train), *as_tensors(test))


def load_digits_tensors() -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled 8x8 digits (real, offline) as uint8 (N,1,8,8), split train/test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 17 grey levels (0..16) mapped onto 0..255 so every dataset shares the uint8 path.
    x = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    y = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_TEST_SEED))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "digits": (1, 8, 8)}


def dataset_identity(cfg: TrainConfig) -> tuple:
    """What decides the loaded tensors: the dataset and, for CIFAR, each file's path, size and mtime in data_dir."""
    if cfg.dataset == "digits":
        return ("digits",)
    folder = Path(cfg.data_dir).expanduser().resolve() / cifar_class(cfg.dataset).base_folder
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return (cfg.dataset, str(folder), tuple(file_identity(p) for p in files))


def load_splits(cfg: TrainConfig) -> ImageSplits:
    """Load cfg.dataset and carve the seeded validation split (and optional subset) from its training set.

    Kept per process (keyed by the dataset files' identity and the split settings), so a reused
    worker's next trial does not read the dataset again; the returned tensors are shared: do not modify them.
    """
    identity = dataset_identity(cfg)

    def load() -> tuple[torch.Tensor, ...]:
        if cfg.dataset == "digits":
            return load_digits_tensors()
        return load_cifar(cfg.dataset, cfg.data_dir, cfg.download)

    def split() -> ImageSplits:
        train_x, train_y, test_x, test_y = process_cached("dataset", identity, load)
        return split_train(train_x, train_y, test_x, test_y, NUM_CLASSES[cfg.dataset],
                           val_size=cfg.val_size, train_subset=cfg.train_subset, seed=cfg.data_seed)

    return process_cached("splits", (identity, cfg.val_size, cfg.train_subset, cfg.data_seed), split)


def split_train(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                num_classes: int, *, val_size: int, train_subset: int, seed: int) -> ImageSplits:
    """Shuffle the training set with `seed`, take the first val_size as validation, optionally subset the rest."""
    if val_size >= len(train_y):
        raise ValueError(f"val_size={val_size} must be smaller than the training set ({len(train_y)} images)")
    perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    if val_size == 0:
        # No held-out split: select on the test set, as the reference code does (test-selected numbers).
        val_x, val_y = test_x, test_y
    else:
        val_x, val_y = train_x[val_idx], train_y[val_idx]
    return ImageSplits(train_x[train_idx], train_y[train_idx], val_x, val_y, test_x, test_y, num_classes)


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0,1]."""
    return x_uint8.float().div_(255.0)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched RandomCrop(size, padding=pad, zero fill) + horizontal flip, all on x's device."""
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (n, h, 1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # (n, 1, w)
        batch = torch.arange(n, device=dev)[:, None, None]
        # Advanced indexing on dims 0, 2, 3 gathers every crop at once: (n, h, w, c).
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        do_flip = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(do_flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class DeviceLoader:
    """Yields float batches from a uint8 dataset held on `device`; epoch e's order and augmentation depend only on (seed, e)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 device: torch.device, shuffle: bool = False, augment: bool = False,
                 flip: bool = True, seed: int = 0, channels_last: bool = False) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.flip = flip
        self.seed = seed
        self.channels_last = channels_last
        # pad 4 at 32x32 (the paper's RandomCrop); scaled down for small images (1 at 8x8).
        self.pad = max(1, images.shape[-1] // 8)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of epoch `epoch` as (float images in [0,1], labels)."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, device=self.device, generator=gen) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            idx = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            x = to_float(self.images[idx])
            if self.augment:
                x = random_crop_flip(x, self.pad, self.flip, gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
