"""GPU packing: how many trials Ray puts on a GPU, when they fit, what to ask for instead; the probe off CUDA."""

import pytest

from trainables.config import TrainConfig
from trainables import memory
from trainables.memory import (check_packing, gpus_for, memory_variants, packing_error, probe, probe_in_subprocess,
                               trials_per_gpu)


@pytest.mark.parametrize("gpus, packed", [(0, 0), (1, 1), (2, 1), (0.5, 2), (0.34, 2), (0.33, 3), (0.25, 4),
                                          (0.2, 5), (0.3, 3), (1 / 3, 3), (0.1, 10)])
def test_trials_per_gpu_is_what_ray_packs(gpus, packed):
    assert trials_per_gpu(gpus) == packed


@pytest.mark.parametrize("k", range(1, 40))
def test_the_suggested_fraction_packs_exactly_k(k):
    assert trials_per_gpu(gpus_for(k)) == k


def test_a_packing_that_fits_passes():
    assert packing_error([21.3] * 3, 0.33, 79.1) is None
    assert packing_error([19.0, 10.0, 5.0], 0.25, 79.1) is None  # even 4 of the largest fit
    assert packing_error([200.0], 0, 79.1) is None  # no GPU requested: nothing to check
    assert packing_error([], 0.25, 79.1) is None


def test_a_packing_that_does_not_fit_says_what_does():
    msg = packing_error([21.3], 0.25, 79.1)
    assert msg == ("trial.gpus=0.25 packs 4 trials of ~21.3 GiB on a 79.1 GiB GPU; at most 3 fit: "
                   "use trial.gpus=0.33 or more")
    # Any configuration of the space may fill the GPU: the largest counts for every packed trial.
    msg = packing_error([30.0, 5.0, 5.0, 5.0], 0.25, 79.1)
    assert "at most 2 fit: use trial.gpus=0.5 or more" in msg and "\n" not in msg
    assert packing_error([float("inf")], 0.5, 79.1).startswith("one trial needs ~inf GiB")  # the probe ran out of memory


def test_a_single_trial_too_large_for_the_gpu_is_named():
    msg = packing_error([90.0], 1, 79.1)
    assert msg.startswith("one trial needs ~90.0 GiB of GPU memory but the GPU has 79.1 GiB") and "batch_size" in msg


def test_memory_variants_cover_the_searched_memory_keys_only():
    base = TrainConfig(dataset="digits", student="cnn_small", teacher="digits_cnn_medium_trades").to_dict()
    variants = memory_variants(base, {"teacher": ["digits_cnn_medium_trades", "digits_cnn_large_trades",
                                                  "wrn34_10_trades"],  # a CIFAR teacher: invalid on digits
                                      "batch_size": [64, 128], "alpha": [0.5, 0.9]})
    assert len(variants) == 4
    assert [v["batch_size"] for v in variants] == [128, 128, 64, 64]
    assert {v["teacher"] for v in variants} == {"digits_cnn_medium_trades", "digits_cnn_large_trades"}
    assert all(v["alpha"] == base["alpha"] for v in variants)


def test_the_probe_returns_none_off_cuda():
    cfg = TrainConfig(dataset="digits", student="cnn_small", method="natural", teacher="none", device="cpu")
    assert probe(cfg.to_dict()) is None
    assert probe_in_subprocess([cfg.to_dict()], timeout_s=120) == [None]


def test_check_packing_probes_only_packed_gpus_and_applies_the_verdict(monkeypatch):
    cfg = TrainConfig().to_dict()
    probed = []

    def fake_probe(configs, timeout_s):
        probed.append(len(configs))
        return [{"gpu_name": "H100", "gpu_total_gib": 79.1, "estimate_gib": 21.3} for _ in configs]

    monkeypatch.setattr(memory, "probe_in_subprocess", fake_probe)
    assert check_packing([cfg], 1) == (None, []) and check_packing([cfg], 0.6) == (None, []) and probed == []
    error, results = check_packing([cfg, cfg], 0.25)
    assert error.endswith("at most 3 fit: use trial.gpus=0.33 or more") and len(results) == 2
    assert check_packing([cfg], 0.33)[0] is None
    monkeypatch.setattr(memory, "probe_in_subprocess", lambda configs, timeout_s: [None] * len(configs))
    assert check_packing([cfg], 0.25) == (None, [None])  # no GPU here: nothing to measure
    monkeypatch.setattr(memory, "probe_in_subprocess", lambda configs, timeout_s: [
        {"gpu_name": "H100", "gpu_total_gib": 79.1, "oom": True, "estimate_gib": float("inf")}])
    error, _ = check_packing([cfg], 0.25)
    assert "runs out of memory" in error and "student=resnet18 teacher=wrn34_10_trades" in error
