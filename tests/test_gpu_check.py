"""benchmarks.gpu_check: says it needs CUDA on a CPU machine; its comparison runs end to end (on the CPU, where amp is a no-op)."""

import pytest
import torch
from conftest import save_random_teacher

from benchmarks import gpu_check
from trainables.config import TrainConfig


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would really run")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert "needs CUDA" in capsys.readouterr().out


def test_comparison_runs_and_amp_changes_no_cpu_training_but_bf16_changes_a_step(tmp_path):
    teacher = "digits_cnn_medium_trades"
    save_random_teacher(tmp_path)
    cfg = TrainConfig.from_dict({"dataset": "digits", "student": "cnn_small", "teacher": teacher, "method": "rslad",
                                 "teachers_dir": str(tmp_path), "epochs": 1, "train_subset": 128, "val_size": 64,
                                 "batch_size": 64, "eps": 0.1, "attack_step_size": 0.025, "device": "cpu",
                                 "num_threads": 1})
    results = gpu_check.compare_amp(cfg)
    fp32, bf16 = results["amp=false (fp32)"], results["amp=true (bf16)"]
    assert (fp32["val_clean_acc"], fp32["val_pgd_acc"]) == (bf16["val_clean_acc"], bf16["val_pgd_acc"])
    # train.amp acts only on CUDA; the one-step comparison runs bf16 autocast on the CPU too, and it moves x'.
    step = results["one step"]
    assert 0 < step["x_adv_elements_changed"] < 1 and 0 < step["grad_relative_change"] < 1
    text = gpu_check.report(results, cfg, "cpu")
    assert "amp=true (bf16)" in text and "of x' elements change" in text
