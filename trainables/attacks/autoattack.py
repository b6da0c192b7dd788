"""The one adapter over `pyautoattack` (AutoAttack, Croce & Hein 2020): L-inf robust accuracy of a whole set."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from trainables.attacks.pgd import model_mode

log = logging.getLogger(__name__)

# The standard version's attacks, in the order and spelling pyautoattack uses.
STANDARD_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
# Every attack name pyautoattack's custom version accepts.
KNOWN_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS: tuple[str, ...] = ("standard", "custom", "plus")

# pyautoattack logs to this logger (its name is fixed in the package); it propagates to the root.
PYAUTOATTACK_LOGGER = "auto-attack"


@dataclass
class AutoAttackResult:
    """Outcome of one AutoAttack run; `is_standard` says whether it may be reported as "AutoAttack"."""

    robust_accuracy: float
    n: int
    attacks_run: list[str] = field(default_factory=list)
    version: str = "standard"
    is_standard: bool = False


class _LogWriter(io.TextIOBase):
    """File-like sink that forwards stray print() output of the package to Python logging."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._buffer = ""

    def write(self, s: str) -> int:
        self._buffer += s
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self._logger.debug(line)
        return len(s)

    def flush(self) -> None:
        if self._buffer.strip():
            self._logger.debug(self._buffer)
        self._buffer = ""


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA device indices whose RNG pyautoattack reseeds (it calls torch.cuda.manual_seed)."""
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def autoattack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    version: str = "standard",
    attacks: list[str] | tuple[str, ...] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> AutoAttackResult:
    """Robust accuracy of `model` on (images, labels) under L-inf AutoAttack at `eps`.

    version="standard" runs APGD-CE, APGD-T, FAB-T and Square with the standard settings.
    version="custom" runs the named `attacks` with the *standard* version's settings
    (1 APGD-CE restart, 9 target classes, 5000 Square queries), not pyautoattack's custom
    defaults (5 restarts), so a custom list that covers STANDARD_ATTACKS is exactly the
    standard evaluation and a shorter list is a cheaper subset of it.
    """
    if version not in VERSIONS:
        raise ValueError(f"version={version!r} is not allowed; allowed: {', '.join(VERSIONS)}")
    if version == "custom":
        if not attacks:
            raise ValueError("version='custom' needs a non-empty attacks=[...] list")
        unknown = [a for a in attacks if a not in KNOWN_ATTACKS]
        if unknown:
            raise ValueError(f"unknown AutoAttack attacks {unknown}; allowed: {', '.join(KNOWN_ATTACKS)}")
    elif attacks is not None:
        raise ValueError(f"attacks=[...] is only used with version='custom', not {version!r}")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float (N,C,H,W) tensor in [0,1], got {images.dtype} {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("autoattack needs at least one image")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")

    from pyautoattack import AutoAttack  # imported here so that importing trainables stays cheap

    device = torch.device(device) if device is not None else _model_device(model)
    x = images.detach().to(device=device, dtype=torch.float32)
    y = labels.detach().to(device=device, dtype=torch.long)

    # Built as "standard" and then narrowed, so custom subsets keep the standard settings.
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="plus" if version == "plus" else "standard",
                           device=device, seed=seed)
    if version == "custom":
        adversary.attacks_to_run = list(attacks)
        adversary.version = "custom"
    attacks_run = list(adversary.attacks_to_run)

    pkg_logger = logging.getLogger(PYAUTOATTACK_LOGGER)
    # fork_rng: pyautoattack calls torch.manual_seed(seed) itself; keep the caller's RNG stream untouched.
    # autocast disabled: AutoAttack numbers are fp32 numbers even if the caller trains under autocast.
    with (
        model_mode(model, "eval"),
        torch.random.fork_rng(devices=_rng_devices(device)),
        torch.autocast(device_type=device.type, enabled=False),
        contextlib.redirect_stdout(_LogWriter(pkg_logger)),
    ):
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)

    # y_adv is the model's prediction on the returned x_adv: the clean prediction where the
    # point was already wrong or never broken, the adversarial prediction where it was broken.
    n = int(y.shape[0])
    robust = float((y_adv.to(y.device) == y).float().mean().item())
    is_standard = version == "standard" or (version == "custom" and set(STANDARD_ATTACKS) <= set(attacks_run))
    log.info("AutoAttack %s (%s) eps=%.5f n=%d: robust accuracy %.4f", version, ", ".join(attacks_run), eps, n, robust)
    return AutoAttackResult(robust_accuracy=robust, n=n, attacks_run=attacks_run, version=version,
                            is_standard=is_standard)
