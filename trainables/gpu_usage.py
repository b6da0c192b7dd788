"""GPU utilisation during an epoch: NVML's busy percentage, sampled a few times a second while training (CUDA only).

`torch.cuda.utilization` asks NVML (the nvidia-ml-py package) what fraction of the last sample
period (1/6 s to 1 s, by GPU model) a kernel was running. It is the whole GPU's figure: trials
packed onto one GPU with fractional trial.gpus each see their neighbours' work too. A query
costs well under a millisecond and does not wait for the GPU, so sampling at most every
`every_s` seconds costs nothing measurable; on the CPU, or without NVML, nothing is sampled.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 0.5


class UtilisationSampler:
    """Call step() after each training step and epoch_mean() at the epoch's end (None when nothing was sampled)."""

    def __init__(self, device: torch.device, every_s: float = SAMPLE_EVERY_S) -> None:
        self.device = device
        self.every_s = every_s
        self.enabled = device.type == "cuda"
        self._samples: list[float] = []
        self._last = -float("inf")

    def step(self) -> None:
        """Sample if `every_s` seconds passed since the last sample."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._sample()

    def _sample(self) -> None:
        try:
            self._samples.append(float(torch.cuda.utilization(self.device)))
        except Exception as err:  # noqa: BLE001  (no nvidia-ml-py, no NVML library, an unsupported GPU: all mean none)
            self.enabled = False
            log.warning("GPU utilisation is not recorded: %s: %s", type(err).__name__, " ".join(str(err).split())[:200])

    def epoch_mean(self) -> float | None:
        """The mean of this epoch's samples (one is taken now if the epoch was shorter than every_s); resets."""
        if self.enabled and not self._samples:
            self._sample()
        samples, self._samples = self._samples, []
        return sum(samples) / len(samples) if samples else None
