"""The CIFAR-10 path end to end on a CPU: torchvision's files on disk, ResNet-18 <- WRN-34-10, profile=paper.

A small CIFAR-10 is written in torchvision's on-disk format (cifar-10-batches-py: data_batch_1..5,
test_batch, batches.meta, pickled as torchvision reads them) from the 100 real test images in
../shared/data/cifar10_test100.npz, tiled; a WRN-34-10 teacher file (a seeded random init: this
tests loading, not accuracy) goes into a teachers folder. Then the real commands run:
`python -m search.run space=alpha profile=paper` (2 trials of 1 epoch on a 16-image subset, through
the preflight, Ray, the real loaders and models, and MLflow) and `python -m analysis.finalize` on it.

AutoAttack costs minutes per image that a model classifies right and attacks fail on (a student
after 1 epoch on 16 images is nearly constant: its correctly classified images are hard for any
attack). So between the two commands the test rewrites test_batch to start with an image that every
saved model misclassifies and runs AutoAttack on that one image (aa.n=1): finalize's AutoAttack path
and its records are exercised, the attack itself is the adapter's own test.

The one thing that is not real: torchvision checks every CIFAR file against the md5 of the official
release, which hand-written files cannot match. A sitecustomize module on the subprocesses'
PYTHONPATH (inherited by Ray's workers) replaces torchvision's `check_integrity` with "the file
exists"; the preflight's own integrity check goes through the same function.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import env as command_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository beside shared/, as this checkout is.
NPZ = REPO.parent / "shared" / "data" / "cifar10_test100.npz"
NAME = "cifar-path"
PER_TRAIN_BATCH = 40  # 5 files x 40 = 200 training images
TEST_IMAGES = 8
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

SITECUSTOMIZE = '''
"""Test-only: torchvision's CIFAR md5 check accepts hand-written files (see tests/test_cifar_path.py)."""
import importlib.abc
import importlib.machinery
import os
import sys


class _AcceptWrittenCifar(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torchvision.datasets.utils":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AcceptWrittenCifar())
'''


def _batch(idx: np.ndarray, label: str) -> dict:
    """One pickled CIFAR batch as torchvision reads it: data (N, 3072) in channel planes (CHW), labels a list."""
    blob = np.load(NPZ)
    images, labels = blob["images"], blob["labels"]  # (100, 32, 32, 3) uint8 HWC, (100,)
    return {"batch_label": label, "labels": [int(v) for v in labels[idx]],
            "data": images[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1).copy(),
            "filenames": [f"img_{i}.png" for i in idx]}


def write_test_batch(folder: Path, idx: np.ndarray) -> None:
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_batch(idx, "testing batch 1 of 1"), f)


def write_cifar10(root: Path) -> Path:
    """cifar-10-batches-py under root: 5 training batches and a test batch of tiled real images, plus batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    n = len(np.load(NPZ)["labels"])
    for b in range(5):
        idx = (np.arange(PER_TRAIN_BATCH) + b * PER_TRAIN_BATCH) % n  # tiled: 200 from 100
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(_batch(idx, f"training batch {b + 1} of 5"), f)
    write_test_batch(folder, np.arange(TEST_IMAGES))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": PER_TRAIN_BATCH, "num_vis": 3072}, f)
    return folder


def put_a_misclassified_image_first(folder: Path, model_files: list[Path]) -> None:
    """Rewrite test_batch so its first image is one that every model file gets wrong (AutoAttack then has nothing to do)."""
    from trainables.checkpoints import load_model

    blob = np.load(NPZ)
    x = torch.from_numpy(blob["images"]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(blob["labels"]).long()
    wrong = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        for path in model_files:
            wrong &= load_model(path)[0](x).argmax(1) != y
    if not wrong.any():
        pytest.fail(f"every one of the 100 images is classified right by some model file of {model_files}")
    first = int(wrong.nonzero()[0])
    write_test_batch(folder, np.array([first, *[i for i in range(TEST_IMAGES) if i != first][:TEST_IMAGES - 1]]))


def write_teacher(teachers: Path) -> Path:
    """A seeded random WRN-34-10 saved where the paper profile looks for wrn34_10_trades."""
    from trainables.models import build_model
    from trainables.teachers import default_checkpoint_path

    torch.manual_seed(0)
    path = default_checkpoint_path("wrn34_10_trades", teachers)
    path.parent.mkdir(parents=True)
    torch.save(build_model("wrn34_10", num_classes=10, in_channels=3).state_dict(), path)
    return path


def run(cmd: list[str], cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def cifar_search(tmp_path_factory):
    if not NPZ.is_file():
        pytest.skip(f"needs the shared CIFAR-10 sample at {NPZ} (the shared/ folder beside the repository)")
    work = tmp_path_factory.mktemp("cifar")
    cifar = write_cifar10(work / "data")
    write_teacher(work / "teachers")
    (work / "site").mkdir()
    (work / "site" / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {**command_env(work),
           "PYTHONPATH": os.pathsep.join([str(work / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    uri = f"sqlite:///{work / 'mlruns.db'}"
    command = [sys.executable, "-m", "search.run", "space=alpha", "profile=paper", f"name={NAME}",
               "num_samples=2", "max_concurrent=2", "ray.num_cpus=2", "train.epochs=1", "train.train_subset=16",
               "train.val_size=8", "train.batch_size=8", "train.val_batch_size=8",
               f"train.data_dir={work / 'data'}", f"train.teachers_dir={work / 'teachers'}",
               f"storage={work / 'ray_results'}", f"tracking.uri={uri}"]
    before = sorted(work.rglob("*"))
    plan = run([*command, "dry_run=true"], work, env, timeout=300)
    assert sorted(work.rglob("*")) == before, "the dry run wrote something"
    start = time.monotonic()
    search = run(command, work, env, timeout=600)
    searched = time.monotonic()
    model_files = sorted((work / "ray_results").rglob("*_model.pt"))
    assert len(model_files) == 4, model_files  # best and last of each trial
    put_a_misclassified_image_first(cifar, model_files)
    final = run([sys.executable, "-m", "analysis.finalize", f"name={NAME}", "top_k=1", "aa.n=1", "device=cpu",
                 f"tracking.uri={uri}"], work, env, timeout=600)
    print(f"\nCIFAR path: search {searched - start:.0f} s, finalize {time.monotonic() - searched:.0f} s")
    return {"work": work, "uri": uri, "plan": plan, "search": search, "finalize": final}


def test_the_dry_run_found_the_cifar10_files_and_the_teacher(cifar_search):
    work = cifar_search["work"]
    flat = " ".join(cifar_search["plan"].stdout.split())
    assert f"data cifar10 in {work / 'data'} (files and checksums verified)" in flat
    assert f"teachers wrn34_10_trades: {work / 'teachers' / 'wrn34_10_trades.pt'} (found; loads)" in flat
    # 1-epoch trials reach every ASHA rung at their only epoch: each runs its whole schedule
    assert "trial-epochs ~2 expected with ASHA on schedule_pct" in flat and "(2 x 1 epoch per trial)" in flat


def test_paper_profile_search_trains_resnet18_from_wrn34_10_on_cifar10_files(cifar_search):
    from mlflow.tracking import MlflowClient

    assert "top trials by val_pgd_acc" in cifar_search["search"].stdout
    client = MlflowClient(cifar_search["uri"])
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("rslad.role") == "trial"]
    assert len(children) == 2
    for run in children:
        params = run.data.params
        assert (params["dataset"], params["student"], params["teacher"], params["method"]) == (
            "cifar10", "resnet18", "wrn34_10_trades", "rslad")
        assert run.data.tags["rslad.status"] == "finished" and run.info.status == "FINISHED"
        assert 0 <= run.data.metrics["val_pgd_acc"] <= run.data.metrics["val_clean_acc"] <= 1
        folder = Path(run.data.tags["rslad.checkpoint_dir"])
        assert (folder / "best_model.pt").is_file() and (folder / "last_model.pt").is_file()


def test_finalize_evaluates_the_winner_on_the_cifar10_test_files(cifar_search):
    from mlflow.tracking import MlflowClient

    from analysis.runs import result_key
    from trainables.schema import EVAL_COLUMNS

    client = MlflowClient(cifar_search["uri"])
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rslad.role") == "search")
    winner = next(r for r in runs if r.data.tags.get("ray.trial_id") == parent.data.tags["rslad.final_winner"])
    assert winner.data.tags["test.n"] == str(TEST_IMAGES)  # the whole test_batch written above
    for checkpoint in ("best", "last"):
        clean = winner.data.metrics[result_key("clean", checkpoint)]
        for column in EVAL_COLUMNS:
            assert 0 <= winner.data.metrics[result_key(column, checkpoint)] <= clean
        # AutoAttack ran (all four standard attacks) on the one image every model gets wrong
        assert winner.data.metrics[result_key("autoattack", checkpoint)] == 0.0
    assert winner.data.tags["test.aa_n"] == "1" and winner.data.tags["test.aa_version"] == "standard"
    assert parent.data.tags["rslad.final_winner"] in cifar_search["finalize"].stdout  # the printed table
