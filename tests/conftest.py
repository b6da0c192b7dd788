"""Shared test fixtures: one torch thread, real digits as float tensors, and a small trained classifier."""

import os
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits


@pytest.fixture(autouse=True)
def environment_restored():
    """Commands run in-process (main() of search.run, ray.init) set variables such as RAY_AUTH_MODE or
    MLFLOW_LOGGING_LEVEL; they must not reach the next test's subprocesses."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(folder, completed process, seconds) of one real smoke search, shared by the end-to-end and screenshot tests."""
    from commands import smoke_search

    folder = tmp_path_factory.mktemp("smoke-search")
    return (folder, *smoke_search(folder))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine 2 threads ran 2-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DIGITS_TEACHER = "digits_cnn_medium_trades"


def save_random_teacher(folder, seed: int = 0):
    """The smoke teacher's file (cnn_medium) with seeded random weights, where the registry entry looks for it."""
    from trainables.models import build_model
    from trainables.teachers import default_checkpoint_path, save_teacher_checkpoint

    torch.manual_seed(seed)
    return save_teacher_checkpoint(build_model("cnn_medium", 10, 1), default_checkpoint_path(DIGITS_TEACHER, folder),
                                   DIGITS_TEACHER, {})


class DigitsNet(nn.Module):
    """A small MLP on 8x8 digits with BatchNorm and Dropout, so train/eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_digits_net(x: torch.Tensor, y: torch.Tensor, steps: int = 300, seed: int = 0,
                     model: Callable[[], nn.Module] = DigitsNet) -> nn.Module:
    """Adam on minibatches of the real digits (model() built after seeding); a few hundred steps reach ~95 % test accuracy."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits scaled to [0,1] (/16) as (N,1,8,8): 1500 train, the rest test."""
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:1500], y[:1500], x[1500:], y[1500:]


@pytest.fixture(scope="session")
def make_digits_net(digits) -> Callable[..., DigitsNet]:
    """Train a DigitsNet on the digits' training part: make_digits_net(steps=300, seed=0)."""
    x_tr, y_tr, _, _ = digits
    return lambda steps=300, seed=0: train_digits_net(x_tr, y_tr, steps=steps, seed=seed)
