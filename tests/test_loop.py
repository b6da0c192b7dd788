"""The epoch loop: determinism, exact resume, checkpoints, and a real RSLAD distillation on digits."""

import pytest
import torch
from conftest import save_random_teacher

from trainables import checkpoints
from trainables.files import atomic_save
from trainables.config import TrainConfig
from trainables.loop import Training, fit

DIGITS = dict(dataset="digits", student="cnn_small", batch_size=64, lr=0.05, eps=0.1,
              attack_step_size=0.025, val_size=300, device="cpu",
              lr_milestones=(6, 7), lr_milestones_ref=8, num_threads=1)


def digits_cfg(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**DIGITS, "method": "natural", "teacher": "none", "epochs": 2, **changes})


def test_fit_yields_one_metrics_dict_per_epoch():
    history = list(fit(digits_cfg(epochs=2, train_subset=256)))
    assert [m["epoch"] for m in history] == [1, 2]
    for m in history:
        assert {"train_loss", "lr", "val_clean_acc", "val_pgd_acc", "epoch_time_s", "images_per_s",
                "schedule_pct", "best_val_pgd_acc"} <= set(m)
        assert 0 <= m["val_pgd_acc"] <= m["val_clean_acc"] <= 1
    assert history[-1]["schedule_pct"] == 100.0


def test_same_seed_same_metrics_on_cpu():
    cfg = digits_cfg(method="sat", epochs=2, train_subset=256)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("epoch_time_s", "images_per_s")} for m in ms]
    assert strip(fit(cfg)) == strip(fit(cfg))
    assert strip(fit(cfg)) != strip(fit(cfg.replace(seed=1)))


def test_resume_from_state_gives_the_same_next_epoch(tmp_path):
    cfg = digits_cfg(method="trades", epochs=3, train_subset=256)
    straight = Training(cfg)
    uninterrupted = [straight.run_epoch() for _ in range(3)]

    first = Training(cfg)
    first.run_epoch()
    path = atomic_save(first.state_dict(), tmp_path / "state.pt")
    del first
    torch.manual_seed(999)  # whatever happened in between must not matter
    resumed = Training(cfg, checkpoints.load(path))
    assert resumed.epoch == 1
    rest = list(resumed)
    drop = ("epoch_time_s", "images_per_s")
    for a, b in zip(uninterrupted[1:], rest):
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))


def test_resume_refuses_a_state_from_another_config():
    state = Training(digits_cfg(epochs=1, train_subset=64)).state_dict()
    with pytest.raises(ValueError, match="different config.*lr"):
        Training(digits_cfg(epochs=1, train_subset=64, lr=0.01), state)


def test_model_files_rebuild_the_student(tmp_path):
    training = Training(digits_cfg(epochs=1, train_subset=128))
    training.run_epoch()
    for name, blob in training.model_files().items():
        atomic_save(blob, tmp_path / name)
    model, cfg, meta = checkpoints.load_model(tmp_path / checkpoints.BEST_MODEL_FILE)
    assert cfg == training.cfg and meta["epoch"] == 1 and not model.training
    x = torch.rand(4, 1, 8, 8)
    training.model.eval()
    assert torch.allclose(model(x), training.model(x))


def test_missing_teacher_is_a_clear_error(tmp_path):
    from trainables.teachers import TeacherLoadError

    cfg = digits_cfg(method="rslad", teacher="digits_cnn_medium_trades", teachers_dir=str(tmp_path))
    with pytest.raises(TeacherLoadError, match="digits_cnn_medium_trades"):
        Training(cfg)


@pytest.fixture(scope="module")
def trades_teacher(tmp_path_factory):
    """A TRADES-trained cnn_medium teacher on digits, saved where the registry entry expects it."""
    from trainables.teachers import default_checkpoint_path, save_teacher_checkpoint

    folder = tmp_path_factory.mktemp("teachers")
    cfg = digits_cfg(student="cnn_medium", method="trades", epochs=6)
    training = Training(cfg)
    history = list(training)
    path = default_checkpoint_path("digits_cnn_medium_trades", folder)
    save_teacher_checkpoint(training.model, path, "digits_cnn_medium_trades", history[-1])
    return folder, history[-1]


def test_rslad_student_is_clearly_more_robust_than_a_natural_one(trades_teacher):
    folder, teacher_metrics = trades_teacher
    natural = list(fit(digits_cfg(method="natural", epochs=6)))[-1]
    # kl_scale 1: the paper's 1/10 is part of a 300-epoch learning rate; in 6 epochs it leaves the student undertrained.
    rslad = list(fit(digits_cfg(method="rslad", teacher="digits_cnn_medium_trades",
                                teachers_dir=str(folder), epochs=6, kl_scale=1.0)))[-1]
    print(f"\nteacher (TRADES cnn_medium): clean {teacher_metrics['val_clean_acc']:.3f} pgd {teacher_metrics['val_pgd_acc']:.3f}"
          f"\nnatural student: clean {natural['val_clean_acc']:.3f} pgd {natural['val_pgd_acc']:.3f}"
          f"\nRSLAD student:   clean {rslad['val_clean_acc']:.3f} pgd {rslad['val_pgd_acc']:.3f}")
    assert natural["val_clean_acc"] > 0.85  # the natural student did learn the task
    assert rslad["val_pgd_acc"] > natural["val_pgd_acc"] + 0.2
    assert rslad["val_clean_acc"] > 0.7


REUSE_SCRIPT = """
import json, sys
from trainables.config import TrainConfig
from trainables.loop import fit
print(json.dumps(list(fit(TrainConfig.from_dict(json.loads(sys.argv[1]))))))
"""
TIMINGS = ("epoch_time_s", "images_per_s")


def test_a_reused_worker_gives_the_same_metrics_as_a_fresh_process(tmp_path, monkeypatch):
    """Tune's reuse_actors runs the next trial in the same process, with the dataset and teacher already loaded."""
    import json
    import os
    import subprocess
    import sys

    from trainables import data, teachers
    from trainables.runtime import clear_process_caches

    save_random_teacher(tmp_path)
    cfg = digits_cfg(method="rslad", teacher="digits_cnn_medium_trades", teachers_dir=str(tmp_path), epochs=2,
                     train_subset=256, attack_steps=3, val_attack_steps=3)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in TIMINGS} for m in ms]
    clear_process_caches()
    cold = strip(fit(cfg))
    # The second trial of this process must find both in the process caches, not load them again.
    monkeypatch.setattr(data, "load_digits_tensors", lambda: pytest.fail("dataset loaded again"))
    monkeypatch.setattr(teachers, "build_teacher", lambda *a, **k: pytest.fail("teacher loaded again"))
    torch.manual_seed(1234)  # whatever the previous trial left in the global RNG must not matter
    warm = strip(fit(cfg))
    clear_process_caches()
    out = subprocess.run([sys.executable, "-c", REUSE_SCRIPT, json.dumps(cfg.to_dict())], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    fresh = strip(json.loads(out.stdout.splitlines()[-1]))
    assert warm == cold == fresh
    assert len(fresh) == 2 and fresh[-1]["train_loss"] > 0


def test_loaded_splits_are_shared_within_a_process_until_the_split_changes():
    from trainables.data import load_splits

    cfg = digits_cfg(train_subset=128)
    assert load_splits(cfg) is load_splits(cfg)
    other = load_splits(cfg.replace(data_seed=1))
    assert other is not load_splits(cfg) and not torch.equal(other.train_x, load_splits(cfg).train_x)
