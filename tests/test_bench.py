"""The benchmarks run end to end on tiny settings and compare like with like (no timings are asserted)."""

import torch

from benchmarks import rslad_epoch
from trainables.methods import rslad_loss


def test_the_reference_style_loss_is_rslad_loss():
    g = torch.Generator().manual_seed(0)
    s_nat, s_adv, t = (torch.randn(16, 10, generator=g) * 3 for _ in range(3))
    reference = 0.1 * (5 / 6 * rslad_epoch.kl_sum(s_adv, t).mean() + 1 / 6 * rslad_epoch.kl_sum(s_nat, t).mean())
    assert torch.allclose(reference, rslad_loss(s_nat, s_adv, t, None, 5 / 6, "nat-nat-nat", 0.1), rtol=1e-6)


def test_rslad_epoch_benchmark_runs_all_variants_on_a_tiny_epoch(capsys, monkeypatch):
    from trainables.teachers import TEACHERS

    monkeypatch.setattr(TEACHERS, "_items", dict(TEACHERS._items))  # its benchmark_* teacher entry stays here
    rslad_epoch.main(["--device", "cpu", "--student", "cnn_small", "--teacher", "cnn_small", "--images", "256",
                      "--batch-size", "64", "--repeats", "1"])
    out = capsys.readouterr().out
    for row in ("reference-style loop", "fit() (Training.run_epoch)", "cache, cold", "cache, warm", "cache warm / fit()",
                "teacher forward share"):
        assert row in out
    assert "real CIFAR-10" in out or "random uint8" in out
    monkeypatch.undo()
    assert "benchmark_cnn_small" not in TEACHERS
