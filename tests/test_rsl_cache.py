"""The soft-label cache: exact up to fp16 rounding of the teacher's logits, shared by key, never read torn, safe under concurrency."""

import json
import os
import threading
import time

import pytest
import torch
from conftest import save_random_teacher

from trainables.config import TrainConfig
from trainables.loop import Training
from trainables.methods import METHODS
from trainables.rsl_cache import CachedTeacher, SoftLabelCache, teacher_logits
from trainables.runtime import clear_process_caches

TEACHER = "digits_cnn_medium_trades"
DIGITS = dict(dataset="digits", student="cnn_small", batch_size=64, lr=0.05, eps=0.1, attack_step_size=0.025,
              val_size=300, device="cpu", lr_milestones=(6, 7), lr_milestones_ref=8, num_threads=1,
              teacher=TEACHER, epochs=2, train_subset=256, val_attack_steps=3, attack_steps=4)


@pytest.fixture
def teachers(tmp_path):
    clear_process_caches()  # each test's teacher file is new; nothing may leak between tests
    save_random_teacher(tmp_path / "teachers")
    yield tmp_path / "teachers"
    clear_process_caches()


def cfg(teachers, **changes) -> TrainConfig:
    return TrainConfig.from_dict({**DIGITS, "method": "rslad", "teachers_dir": str(teachers), **changes})


def run(training: Training, epochs: int = 2) -> tuple[list[float], list[dict]]:
    """Run epochs and record every step's loss."""
    losses: list[float] = []
    loss_fn = training.method.loss

    def recording(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        losses.append(loss.item())
        return loss

    training.method.loss = recording
    return losses, [training.run_epoch() for _ in range(epochs)]


class Fp16Teacher(torch.nn.Module):
    """The real teacher with its logits rounded through fp16: what the cache stores, computed on the fly."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, x):
        return self.teacher(x).half().float()



def hit_counter(cached: CachedTeacher):
    """Calls answered from the cache so far: the CachedTeacher was called and its real teacher was not."""
    inner, started, hits = [], [], []
    cached.teacher.register_forward_hook(lambda *_: inner.append(1))
    cached.register_forward_pre_hook(lambda *_: started.append(len(inner)))
    cached.register_forward_hook(lambda *_: hits.append(len(inner) == started.pop()))
    return lambda: sum(hits)


@pytest.mark.parametrize("changes", [dict(method="rslad", rsl_source="nat-nat-nat"), dict(method="ard")],
                         ids=["rslad-nat-nat-nat", "ard"])
def test_cached_run_equals_a_run_whose_teacher_rounds_to_fp16_bit_for_bit(teachers, tmp_path, changes):
    reference = Training(cfg(teachers, **changes))
    reference.teacher = Fp16Teacher(reference.teacher)  # these methods only ask T(x): every answer is rounded
    ref_losses, ref_metrics = run(reference)
    cached = Training(cfg(teachers, rsl_cache_dir=str(tmp_path / "cache"), **changes))
    hits = hit_counter(cached.cached_teacher)
    losses, metrics = run(cached)
    assert hits() == len(losses) == 8
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(reference.model.state_dict().values(), cached.model.state_dict().values()))
    assert [m["val_pgd_acc"] for m in metrics] == [m["val_pgd_acc"] for m in ref_metrics]


@pytest.mark.parametrize("changes", [dict(method="rslad", rsl_source="nat-nat-nat"),
                                     dict(method="rslad", rsl_source="nat-adv-nat"),
                                     dict(method="ard"), dict(method="iad", iad_warmup_epochs=1)],
                         ids=["nat-nat-nat", "nat-adv-nat", "ard", "iad"])
def test_cached_run_matches_the_uncached_one_within_fp16_rounding(teachers, tmp_path, changes):
    plain_losses, _ = run(Training(cfg(teachers, **changes)))
    cached = Training(cfg(teachers, rsl_cache_dir=str(tmp_path / "cache"), **changes))
    real_calls = []
    cached.teacher.register_forward_hook(lambda m, inp, out: real_calls.append(inp[0].shape[0]))
    hits = hit_counter(cached.cached_teacher)
    losses, _ = run(cached)
    # fp16 keeps 11 significant bits of each logit: relative changes ~5e-4 in the soft labels and in the loss.
    assert losses == pytest.approx(plain_losses, rel=2e-3)
    assert hits() == 8
    needs_x_adv = changes.get("rsl_source", "nat-nat-nat") != "nat-nat-nat" or changes["method"] == "iad"
    # The epoch computations see the 4 clean batches of each epoch; terms with T(x') still run the teacher.
    assert (len(real_calls) > 8) == needs_x_adv


def test_adv_adv_adv_never_shows_the_teacher_a_clean_batch_so_nothing_is_cached(teachers, tmp_path):
    """All three soft labels are T(x'): computing T(x) per step (or per epoch for a cache) would be wasted work."""
    changes = dict(method="rslad", rsl_source="adv-adv-adv")
    plain = Training(cfg(teachers, **changes))
    clean, asked = [], []
    plain.teacher.register_forward_hook(lambda m, inp, out: asked.append(inp[0]))
    loss_fn = plain.method.loss
    plain.method.loss = lambda student, teacher, x, y, epoch: clean.append(x) or loss_fn(student, teacher, x, y, epoch)
    plain_losses, _ = run(plain)
    assert len(clean) == 8 and len(asked) > 8
    assert not any(torch.equal(a, x) for a in asked for x in clean if a.shape == x.shape)

    cached = Training(cfg(teachers, rsl_cache_dir=str(tmp_path / "cache"), **changes))
    assert cached.rsl_cache is None and cached.cached_teacher is None
    assert run(cached)[0] == plain_losses
    assert not (tmp_path / "cache").exists()


def test_a_second_run_reuses_every_epoch_and_a_resumed_run_keeps_counting(teachers, tmp_path):
    cache = str(tmp_path / "cache")
    first = [m for m in Training(cfg(teachers, rsl_cache_dir=cache))]
    assert [(m["rsl_cache_computed"], m["rsl_cache_reused"]) for m in first] == [(1, 0), (2, 0)]
    second = Training(cfg(teachers, rsl_cache_dir=cache))
    m1 = second.run_epoch()
    assert (m1["rsl_cache_computed"], m1["rsl_cache_reused"]) == (0, 1)
    resumed = Training(cfg(teachers, rsl_cache_dir=cache), second.state_dict())
    m2 = resumed.run_epoch()
    assert (m2["rsl_cache_computed"], m2["rsl_cache_reused"]) == (0, 2)
    # A run without the cache reports no cache counts, and may resume a run made with it.
    plain = Training(cfg(teachers), second.state_dict())
    assert "rsl_cache_computed" not in plain.run_epoch()


def test_another_data_seed_or_other_teacher_weights_do_not_reuse(teachers, tmp_path):
    cache = tmp_path / "cache"
    Training(cfg(teachers, rsl_cache_dir=str(cache))).run_epoch()
    other_seed = Training(cfg(teachers, rsl_cache_dir=str(cache), data_seed=1)).run_epoch()
    assert (other_seed["rsl_cache_computed"], other_seed["rsl_cache_reused"]) == (1, 0)
    other_batch = Training(cfg(teachers, rsl_cache_dir=str(cache), batch_size=32)).run_epoch()
    assert (other_batch["rsl_cache_computed"], other_batch["rsl_cache_reused"]) == (1, 0)
    time.sleep(0.01)
    save_random_teacher(teachers, seed=1)  # same name and path, other contents
    other_teacher = Training(cfg(teachers, rsl_cache_dir=str(cache))).run_epoch()
    assert (other_teacher["rsl_cache_computed"], other_teacher["rsl_cache_reused"]) == (1, 0)
    keys = [json.loads((d / "key.json").read_text()) for d in cache.iterdir()]
    assert len(keys) == 4 and len({k["teacher_sha256"] for k in keys}) == 2


def test_a_torn_or_foreign_file_is_never_read_but_computed_again(teachers, tmp_path):
    cache = tmp_path / "cache"
    training = Training(cfg(teachers, rsl_cache_dir=str(cache)))
    good = training.rsl_cache.epoch_logits(0)
    path = training.rsl_cache.path(0)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # torn
    again = Training(cfg(teachers, rsl_cache_dir=str(cache)))
    assert again.rsl_cache.read(0) is None
    m = again.run_epoch()
    assert (m["rsl_cache_computed"], m["rsl_cache_reused"]) == (1, 0)
    assert torch.equal(again.rsl_cache.read(0), good)
    # A complete file whose logits were altered (or that belongs to another key) is refused too.
    altered = torch.load(path, weights_only=True)
    altered["logits"][0, 0] += 1
    torch.save(altered, path)
    assert again.rsl_cache.read(0) is None


def test_cached_teacher_answers_only_the_served_unchanged_batch(teachers):
    training = Training(cfg(teachers))
    teacher = CachedTeacher(training.teacher)
    hits = hit_counter(teacher)
    x = torch.rand(8, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    cached = torch.randn(8, 10).half()
    teacher.serve(x, cached)
    method = METHODS.get("rslad")(training.cfg, None)
    assert torch.equal(method.forward(teacher, x), cached.float())  # through Method.forward, channels_last
    assert torch.equal(teacher(x.clone()), training.teacher(x))  # another tensor: the real teacher
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert teacher(x).dtype == torch.bfloat16  # the dtype the real teacher gives under autocast
    x.add_(0)  # changed in place: no longer the batch the logits belong to
    assert torch.equal(teacher(x), training.teacher(x))
    assert hits() == 2


def test_logits_are_computed_in_loader_order_whatever_the_grouping(teachers):
    training = Training(cfg(teachers))
    batches = [x for x, _ in training.train_loader.epoch(0)]
    per_batch = torch.cat([training.teacher(x).half() for x in batches])
    assert torch.equal(teacher_logits(training.teacher, batches, None, group_images=64), per_batch)
    grouped = teacher_logits(training.teacher, batches, None, group_images=1000)
    assert torch.allclose(grouped.float(), per_batch.float(), atol=1e-2)


def _cache(folder, compute, **kw) -> SoftLabelCache:
    return SoftLabelCache(folder, {"test": 1}, rows=4, classes=3, compute=compute, **kw)


def test_concurrent_trials_compute_an_epoch_once_and_all_read_it(tmp_path):
    calls = []

    def slow_compute(epoch, heartbeat):
        calls.append(epoch)
        time.sleep(0.3)
        return torch.full((4, 3), float(epoch))

    caches = [_cache(tmp_path, slow_compute, poll_s=0.02) for _ in range(4)]
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, caches[i].epoch_logits(5))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [5]
    assert all(torch.equal(r, torch.full((4, 3), 5.0, dtype=torch.float16)) for r in results)
    assert sorted((c.computed, c.reused) for c in caches) == [(0, 1), (0, 1), (0, 1), (1, 0)]
    assert sorted(p.name for p in caches[0].folder.iterdir()) == ["epoch_00005.pt", "key.json"]


def test_a_lock_left_by_a_dead_or_silent_holder_is_taken_over(tmp_path):
    compute = lambda epoch, heartbeat: torch.ones(4, 3)
    dead = _cache(tmp_path, compute)
    dead.folder.mkdir(parents=True)
    lock = dead.folder / "epoch_00000.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 12345, "time": 0}))  # no such process
    assert torch.equal(dead.epoch_logits(0), torch.ones(4, 3, dtype=torch.float16)) and dead.computed == 1
    # A holder on another host is judged by its heartbeat only.
    silent = _cache(tmp_path, compute, stale_lock_s=0.2, poll_s=0.02)
    lock = silent.folder / "epoch_00001.lock"
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    start = time.monotonic()
    silent.epoch_logits(1)
    assert silent.computed == 1 and time.monotonic() - start > 0.1  # it waited for the lock to go stale
    assert not lock.exists()


def test_a_crash_while_writing_leaves_no_file_behind(tmp_path, monkeypatch):
    cache = _cache(tmp_path, lambda e, h: torch.ones(4, 3))

    def crash(obj, f, *a, **k):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.epoch_logits(0)
    monkeypatch.undo()
    assert sorted(p.name for p in cache.folder.iterdir()) == ["key.json"]
    assert cache.epoch_logits(0) is not None and cache.computed == 1
