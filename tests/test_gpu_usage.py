"""trainables/gpu_usage.py: GPU utilisation sampled while training, on CUDA only, and nothing without NVML."""

from __future__ import annotations

import logging

import torch

from trainables import gpu_usage
from trainables.gpu_usage import UtilisationSampler


def test_nothing_is_sampled_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: calls.append(device) or 50)
    sampler = UtilisationSampler(torch.device("cpu"))
    for _ in range(5):
        sampler.step()
    assert sampler.epoch_mean() is None and calls == []


def test_samples_at_most_every_interval_and_reports_the_epochs_mean(monkeypatch):
    clock = {"t": 0.0}
    readings = iter([40, 80, 30])
    monkeypatch.setattr(gpu_usage.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: next(readings))
    sampler = UtilisationSampler(torch.device("cuda", 0), every_s=0.5)
    for t in (0.0, 0.1, 0.4, 0.6, 0.9):  # samples at 0.0 and 0.6
        clock["t"] = t
        sampler.step()
    assert sampler.epoch_mean() == 60.0
    assert sampler.epoch_mean() == 30.0  # an epoch shorter than the interval still gets one sample


def test_without_nvml_it_warns_once_and_stops_asking(monkeypatch, caplog):
    calls = []

    def missing(device=None):
        calls.append(device)
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed or it can't be imported.")

    monkeypatch.setattr(torch.cuda, "utilization", missing)
    sampler = UtilisationSampler(torch.device("cuda", 0), every_s=0.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            sampler.step()
        assert sampler.epoch_mean() is None
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "GPU utilisation is not recorded: ModuleNotFoundError: nvidia-ml-py does not seem to be installed or it "
        "can't be imported."]
