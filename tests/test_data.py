"""Data: the seeded split, the device loader's determinism, batched crop/flip, the offline loaders and their errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.config import TrainConfig
from trainables.data import (
    DatasetNotFoundError,
    DeviceLoader,
    load_cifar,
    load_digits_tensors,
    load_splits,
    random_crop_flip,
    split_train,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_test100.npz"


def test_digits_are_real_uint8_images_with_a_fixed_test_split():
    train_x, train_y, test_x, test_y = load_digits_tensors()
    assert train_x.dtype == torch.uint8 and train_x.shape[1:] == (1, 8, 8)
    assert len(train_y) + len(test_y) == 1797 and len(test_y) == 359
    assert int(train_x.max()) == 255 and set(train_y.tolist()) == set(range(10))
    again = load_digits_tensors()
    assert torch.equal(again[2], test_x)


def test_validation_split_is_seeded_disjoint_and_subset_applies():
    cfg = TrainConfig(dataset="digits", method="natural", teacher="none", val_size=200, train_subset=500, data_seed=3)
    a, b = load_splits(cfg), load_splits(cfg)
    assert torch.equal(a.val_x, b.val_x) and len(a.val_y) == 200 and len(a.train_y) == 500
    c = load_splits(cfg.replace(data_seed=4))
    assert not torch.equal(a.val_x, c.val_x)
    # disjoint: no validation image is also a training image (compare by identity of rows)
    x = torch.arange(20).view(20, 1, 1, 1).to(torch.uint8)
    s = split_train(x, torch.arange(20), x[:2], torch.arange(2), 20, val_size=5, train_subset=0, seed=0)
    assert not set(s.val_x.flatten().tolist()) & set(s.train_x.flatten().tolist())
    assert len(s.train_y) == 15


def test_val_size_zero_selects_on_the_test_set():
    s = load_splits(TrainConfig(dataset="digits", method="natural", teacher="none", val_size=0))
    assert torch.equal(s.val_x, s.test_x)


def test_loader_epoch_depends_only_on_seed_and_epoch():
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(50)
    make = lambda seed: DeviceLoader(x, y, batch_size=16, device=torch.device("cpu"), shuffle=True,
                                     augment=True, seed=seed)
    first = [b for b in make(0).epoch(2)]
    torch.manual_seed(123)  # the global RNG must not matter
    second = [b for b in make(0).epoch(2)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    other_epoch = [b for b in make(0).epoch(3)]
    assert not torch.equal(first[0][1], other_epoch[0][1])
    batches = list(make(1).epoch(0))
    assert sum(len(b[1]) for b in batches) == 50 and len(batches) == len(make(1)) == 4
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(50))
    assert batches[0][0].dtype == torch.float32 and 0 <= batches[0][0].min() and batches[0][0].max() <= 1


def test_crop_is_a_shifted_window_of_the_zero_padded_image_and_flip_mirrors():
    x = torch.rand(64, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=2, flip=True, generator=gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)
    # both flips and several offsets happen
    assert not torch.equal(out, x)
    no_aug = random_crop_flip(x, pad=0, flip=False, generator=gen)
    assert torch.equal(no_aug, x)


def _write_cifar_batches(root: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Write the torchvision CIFAR-10 python layout (pickled dicts + md5-checked names) from real images."""
    import hashlib
    import pickle

    import torchvision

    folder = root / torchvision.datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # rows are CHW in the real files
    names = [n for n, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list]
    for name in names:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # torchvision verifies md5 sums of the real files; point its table at ours for this test.
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in names + ["batches.meta"]}


def test_cifar_loads_from_local_files_with_real_images(tmp_path, monkeypatch):
    if not SHARED.exists():
        pytest.skip(f"real CIFAR-10 sample not found at {SHARED}")
    import torchvision

    sample = np.load(SHARED)
    md5 = _write_cifar_batches(tmp_path, sample["images"], sample["labels"])
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    train_x, train_y, test_x, test_y = load_cifar("cifar10", tmp_path)
    assert train_x.shape == (500, 3, 32, 32) and train_x.dtype == torch.uint8
    assert torch.equal(test_x[:100].permute(0, 2, 3, 1), torch.from_numpy(sample["images"]))
    assert torch.equal(test_y[:100], torch.from_numpy(sample["labels"]))


def test_missing_cifar_is_a_clear_error_saying_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar("cifar10", tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "train.download=true" in msg and "cifar-10-batches-py" in msg
