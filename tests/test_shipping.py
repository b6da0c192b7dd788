"""The head's files reach nodes that cannot see them (trainables/shipping.py), and soft labels shared through a URI
(trainables/rsl_cache.py): fast checks on local files; tests/test_two_nodes.py runs them on two Ray nodes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trainables.rsl_cache import SoftLabelCache
from trainables.shipping import collect, localize

TRAIN = {"dataset": "cifar10", "teacher": "wrn34_10_trades", "teacher_checkpoint": ""}


@pytest.fixture
def head(tmp_path, monkeypatch) -> Path:
    """A 'head machine' folder with a teacher file and a CIFAR-10 folder; node-local copies under tmp_path/node."""
    monkeypatch.setenv("RSLAD_NODE_CACHE", str(tmp_path / "node"))
    (tmp_path / "head" / "teachers").mkdir(parents=True)
    (tmp_path / "head" / "teachers" / "wrn34_10_trades.pt").write_bytes(b"teacher weights")
    batches = tmp_path / "head" / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (batches / name).write_bytes(name.encode() * 3)
    return tmp_path / "head"


def train(head: Path) -> dict:
    return {**TRAIN, "teachers_dir": str(head / "teachers"), "data_dir": str(head / "data")}


def test_a_node_that_sees_the_files_reads_them_where_they_are(head):
    shipped = collect([train(head)], [head / "teachers" / "wrn34_10_trades.pt"])
    assert len(shipped) == 4 and shipped.size == len(b"teacher weights") + sum(3 * len(n) for n in
                                                                             ("data_batch_1", "test_batch", "batches.meta"))
    assert localize(train(head), shipped) == train(head)
    assert localize(train(head), None) == train(head)


def test_a_node_without_the_heads_folders_reads_node_local_copies(head, tmp_path):
    shipped = collect([train(head)], [head / "teachers" / "wrn34_10_trades.pt"])
    shutil.rmtree(head)  # what a second machine sees: none of the head's folders
    local = localize(train(head), shipped)
    assert Path(local["teacher_checkpoint"]).read_bytes() == b"teacher weights"
    assert Path(local["teacher_checkpoint"]).is_relative_to(tmp_path / "node")
    folder = Path(local["data_dir"]) / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == ["batches.meta", "data_batch_1", "test_batch"]
    assert (folder / "test_batch").read_bytes() == b"test_batch" * 3
    # once per node: a second trial finds the copies (same paths, not written again)
    mtime = Path(local["teacher_checkpoint"]).stat().st_mtime_ns
    assert localize(train(head), shipped) == local
    assert Path(local["teacher_checkpoint"]).stat().st_mtime_ns == mtime


def test_a_run_without_a_teacher_or_with_bundled_data_ships_nothing(head):
    digits = {**train(head), "dataset": "digits", "teacher": "none"}
    assert len(collect([digits])) == 0
    assert localize(digits, collect([digits], [head / "teachers" / "wrn34_10_trades.pt"])) == digits


def test_soft_labels_shared_through_a_uri_reach_another_node(tmp_path, monkeypatch):
    """Node A computes and uploads; node B (its own node-local folder) downloads instead of computing; a node whose
    local copy predates the URI uploads it."""
    remote = f"file://{tmp_path / 'bucket' / 'rsl_cache'}"
    calls = []

    def compute(epoch, heartbeat):
        calls.append(epoch)
        return torch.full((4, 3), float(epoch))

    def cache(node: str) -> SoftLabelCache:
        monkeypatch.setenv("RSLAD_NODE_CACHE", str(tmp_path / node))
        return SoftLabelCache(remote, {"teacher": "t"}, 4, 3, compute)

    a = cache("node-a")
    assert torch.equal(a.epoch_logits(0), torch.zeros(4, 3, dtype=torch.float16)) and calls == [0]
    assert (tmp_path / "bucket" / "rsl_cache" / a.digest / "epoch_00000.pt").is_file()
    b = cache("node-b")
    assert torch.equal(b.epoch_logits(0), torch.zeros(4, 3, dtype=torch.float16)) and calls == [0]
    assert (b.computed, b.reused) == (0, 1) and b.path(0).is_file()
    shutil.rmtree(tmp_path / "bucket")  # e.g. a new search (new storage) with the same key
    assert torch.equal(cache("node-b").epoch_logits(0), torch.zeros(4, 3, dtype=torch.float16)) and calls == [0]
    assert (tmp_path / "bucket" / "rsl_cache" / a.digest / "epoch_00000.pt").is_file()
