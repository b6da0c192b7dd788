"""Teachers as data (architecture, training method, accuracies, weight source) plus a strict, safe loader.

A teacher entry names an architecture from `trainables.models`; its weights come from a local
file (by default `<teachers_dir>/<name>.pt`). Files are read with `weights_only=True` only.
Layout fixes applied before the strict load:
- containers {"state_dict"|"model_state_dict"|"model"|"net": ...} are unwrapped;
- `module.` (DataParallel), `model.` and `_orig_mod.` (torch.compile) prefixes are stripped
  when every key carries them;
- TRADES' unused `sub_block1.*` keys are dropped (the model does not build that module);
- buffers that carry no learned state and that older or RobustBench files lack
  (`mean`/`std` of the DeepMind WideResNet, BatchNorm `num_batches_tracked`) keep the model's values;
- `mean`/`std` stored in another layout of the same values (RobustBench's (3, 1, 1), or (3,)) are
  reshaped to the model's (1, 3, 1, 1).
The DeepMind WideResNets are built with the statistics of the teacher's dataset (CIFAR-100's for a
CIFAR-100 teacher), which a file's own `mean`/`std` then replace.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from trainables.errors import UserError
from trainables.files import atomic_save
from trainables.models import build_model
from trainables.registry import Registry
from trainables.schema import DATASETS

SOURCES = ("checkpoint", "robustbench", "trained")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
_FILLABLE_BUFFERS = ("mean", "std")
_SHOWN_KEYS = 5


class TeacherLoadError(UserError, RuntimeError):
    """A teacher's weights are missing, unreadable, or do not fit its architecture; the message says which file."""


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: which architecture, how it was trained, how good it is, and where its weights come from."""

    name: str
    arch: str
    """Model registry name (trainables.models.list_models())."""
    dataset: str
    """cifar10, cifar100 or digits."""
    method: str
    """How the teacher was trained, a method name (trades, sat, sat_awp, trades_awp); a `trained` teacher is trained with it."""
    eps: float
    """L-inf radius it was trained (and evaluated) at."""
    clean_acc: float | None
    """Clean test accuracy as a fraction, None when unknown."""
    aa_acc: float | None
    """AutoAttack (standard, L-inf, eps) accuracy as a fraction, None when unknown."""
    source: str
    """checkpoint (a local file), robustbench (RobustBench zoo, saved to a local file) or trained (python -m search.teachers)."""
    robustbench_id: str = ""
    """RobustBench model id, empty if the teacher is not in the zoo."""
    notes: str = ""
    """Where the numbers come from."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"teacher {self.name!r}: source={self.source!r}; allowed: {', '.join(SOURCES)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"teacher {self.name!r}: dataset={self.dataset!r}; allowed: {', '.join(DATASETS)}")
        for key in ("clean_acc", "aa_acc"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"teacher {self.name!r}: {key}={value} must be a fraction in [0, 1]")


TEACHERS: Registry[TeacherSpec] = Registry("teacher")


def register_teacher(spec: TeacherSpec) -> TeacherSpec:
    """Add a teacher entry; a duplicate name raises ValueError."""
    TEACHERS.add(spec.name, spec)
    return spec


def list_teachers(dataset: str | None = None) -> list[str]:
    """Sorted teacher names, optionally only those for one dataset."""
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}; allowed: {', '.join(DATASETS)}")
    return [n for n in TEACHERS.names() if dataset is None or TEACHERS.get(n).dataset == dataset]


def get_teacher(name: str) -> TeacherSpec:
    """The entry for `name`; raises UnknownNameError listing the known teachers."""
    return TEACHERS.get(name)


_TABLE1 = "numbers: RSLAD supplement Table 1 (CIFAR-10 test set, eps 8/255)"
_EPS = 8 / 255
_CIFAR10_TEACHERS = [
    # (name, arch, clean, AA, source, robustbench id, notes)
    ("resnet18_trades", "resnet18", 0.8193, 0.4923, "checkpoint", "", "TRADES-trained by the RSLAD authors, unreleased"),
    ("resnet34_trades", "resnet34", 0.8338, 0.5046, "checkpoint", "", "TRADES-trained by the RSLAD authors, unreleased"),
    ("resnet50_trades", "resnet50", 0.8425, 0.5047, "checkpoint", "", "TRADES-trained by the RSLAD authors, unreleased"),
    ("wrn34_10_trades", "wrn34_10", 0.8492, 0.5308, "robustbench", "Zhang2019Theoretically",
     "the public TRADES release, the RSLAD default teacher"),
    ("wrn34_20_gowal", "wrn34_20_swish", 0.8564, 0.5686, "robustbench", "Gowal2020Uncovering_34_20",
     "Gowal et al. 2020 without extra data (TRADES loss; swish, normalisation inside the model)"),
    ("wrn70_16_gowal", "wrn70_16", 0.8529, 0.5720, "robustbench", "Gowal2020Uncovering_70_16",
     "Gowal et al. 2020 without extra data (TRADES loss; swish, normalisation inside the model)"),
]
_DIGITS_TEACHERS = [
    ("digits_cnn_small_trades", "cnn_small", "trades"),
    ("digits_cnn_medium_trades", "cnn_medium", "trades"),
    ("digits_cnn_large_trades", "cnn_large", "trades"),
    ("digits_cnn_medium_sat", "cnn_medium", "sat"),
    # The smoke profile's stand-ins for the AWP teachers below (awp_gamma and awp_warmup: TrainConfig's).
    ("digits_cnn_medium_sat_awp", "cnn_medium", "sat_awp"),
    ("digits_cnn_medium_trades_awp", "cnn_medium", "trades_awp"),
]
for _n, _arch, _clean, _aa, _source, _rb, _notes in _CIFAR10_TEACHERS:
    register_teacher(TeacherSpec(_n, _arch, "cifar10", "trades", _EPS, _clean, _aa, _source, _rb,
                                 notes=f"{_notes}; {_TABLE1}"))
# Supplement section E / Table 5: the RSLAD* teacher, a WRN-34-10 trained with SAT + AWP by the RSLAD
# authors (unreleased; "a robust accuracy of 54% against AA", no clean accuracy given). Trained here.
register_teacher(TeacherSpec(
    "wrn34_10_sat_awp", "wrn34_10", "cifar10", "sat_awp", _EPS, None, 0.54, "trained",
    notes="SAT + AWP (AT-AWP, Wu et al. 2020: awp_gamma 0.01, no warm-up), the teacher of the supplement's Table 5 "
          "(RSLAD*); AA 54 % from its section E, clean not given. Trained by `python -m search.teachers "
          "teachers.names=[wrn34_10_sat_awp]` on the profile's schedule; AT-AWP's own is 200 epochs, lr /10 at 100 and "
          "150, weight decay 5e-4 (add train.epochs=200 train.lr_milestones=[100,150] train.lr_milestones_ref=200 "
          "train.weight_decay=5e-4). The public AT-AWP WRN-34-10 (csdongxian/AWP: clean 86.23, AA 53.97) is not in "
          "RobustBench and expects CIFAR-10-normalised inputs, so it is not this entry's weights"))
# The public TRADES + AWP WRN-34-10. RobustBench (model_zoo/cifar10.py, Linf) builds it as
# WideResNet(depth=34, widen_factor=10): the TRADES layout without sub_block1, ReLU, no
# normalisation (trades_AWP trains on ToTensor() images in [0, 1]), which is `wrn34_10` here.
register_teacher(TeacherSpec(
    "wrn34_10_trades_awp", "wrn34_10", "cifar10", "trades_awp", _EPS, 0.8536, 0.5617, "robustbench",
    "Wu2020Adversarial",
    notes="TRADES + AWP (Wu et al. 2020, csdongxian/AWP trades_AWP: gamma 0.005, warm-up 10 of 200 epochs), the "
          "public release in RobustBench as Wu2020Adversarial (WideResNet-34-10 without sub_block1, inputs in [0, 1], "
          "no normalisation); numbers: RobustBench model_info (clean 85.36, AA 56.17). Not the supplement's SAT+AWP "
          "teacher (AA 54 %), which is wrn34_10_sat_awp"))
for _n, _arch, _method in _DIGITS_TEACHERS:
    register_teacher(TeacherSpec(_n, _arch, "digits", _method, 0.1, None, None, "trained",
                                 notes="trained offline by `python -m search.teachers`; its metrics are in the checkpoint"))
del _n, _arch, _clean, _aa, _source, _rb, _notes, _method


def default_checkpoint_path(name: str, teachers_dir: str | os.PathLike) -> Path:
    """Where a teacher's weights are looked for by default: <teachers_dir>/<name>.pt, absolute."""
    return (Path(teachers_dir).expanduser() / f"{name}.pt").resolve()


def checkpoint_path(name: str, train: Mapping[str, Any]) -> Path:
    """Where a run of the train config dict `train` loads teacher `name` from: train.teacher_checkpoint when that run's
    teacher is `name`, else <teachers_dir>/<name>.pt."""
    if train.get("teacher_checkpoint") and train.get("teacher") == name:
        return Path(train["teacher_checkpoint"]).expanduser().resolve()
    return default_checkpoint_path(name, train["teachers_dir"])


def how_to_provide(path: Path, spec: TeacherSpec | None) -> str:
    """The ways to provide a teacher's weights, in one line (every message that reports a missing teacher says this)."""
    name = spec.name if spec is not None else "<name>"
    hints = [f"train it with `python -m search.teachers teachers.names=[{name}]`",
             "or pass train.teacher_checkpoint=/abs/path.pt"]
    if spec is not None and spec.robustbench_id:
        hints.append(f"or, on a machine with internet, save robustbench.utils.load_model({spec.robustbench_id!r}, "
                     f"dataset={spec.dataset!r}, threat_model='Linf').state_dict() with torch.save to {path}")
    elif spec is None:
        hints.append("or, for a RobustBench teacher, download it with robustbench on a machine with internet "
                     "and torch.save its state_dict there")
    return "; ".join(hints)


def _missing(path: Path, spec: TeacherSpec | None) -> TeacherLoadError:
    who = f"teacher {spec.name!r} " if spec is not None else "teacher "
    return TeacherLoadError(f"{who}weights not found at {path}: {how_to_provide(path, spec)}")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with torch.load(weights_only=True) onto the CPU, unwrapping containers and wrapper prefixes."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise _missing(path, None)
    if path.stat().st_size == 0:
        raise TeacherLoadError(f"cannot read teacher weights {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing a file; the refusal alone is the one line to show
            warnings.simplefilter("ignore", UserWarning)
            blob: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a bad file; all mean the same here
        raise TeacherLoadError(f"cannot read teacher weights {path}: {_load_failure_reason(exc)}") from exc
    for _ in range(len(_CONTAINER_KEYS)):
        if not isinstance(blob, Mapping) or _is_state_dict(blob):
            break
        inner = next((blob[k] for k in _CONTAINER_KEYS if isinstance(blob.get(k), Mapping)), None)
        if inner is None:
            break
        blob = inner
    if not isinstance(blob, Mapping) or not _is_state_dict(blob):
        what = f"a dict with keys {sorted(map(str, blob))[:_SHOWN_KEYS]}" if isinstance(blob, Mapping) else type(blob).__name__
        raise TeacherLoadError(f"cannot read teacher weights {path}: not a state dict of tensors (found {what})")
    state = dict(blob)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _load_failure_reason(exc: Exception) -> str:
    """One line out of torch.load's error; its weights_only refusal spans many lines and advises weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split())
        detail = detail.split(" Please use ", 1)[0].split(" Check the documentation", 1)[0].rstrip(". ")
        return (f"refused by torch.load(weights_only=True): {detail} "
                "(corrupt, or not a plain weights file: it pickles Python objects)")
    if not text.strip():  # EOFError and friends carry no message
        return f"{type(exc).__name__}: the file ends early (empty or cut short)"
    first_sentence = " ".join(text.split()).split(". ", 1)[0].rstrip(".")
    return f"{type(exc).__name__}: {first_sentence[:300]}"


def _is_state_dict(blob: Mapping) -> bool:
    return len(blob) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items())


def _fix_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop TRADES' unused sub_block1, fill buffers without learned state that the file lacks, reshape mean/std."""
    expected = model.state_dict()
    if not any(k.startswith("sub_block1.") for k in expected):
        state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    for key, value in expected.items():
        if key not in state and (key in _FILLABLE_BUFFERS or key.endswith(".num_batches_tracked")):
            state[key] = value
        elif key in _FILLABLE_BUFFERS and _other_layout(state[key], value):
            # Per-channel statistics in another layout ((3, 1, 1) in RobustBench's 2021 files): same values.
            state[key] = state[key].reshape(value.shape)
    return state


def _other_layout(stored: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether `stored` holds as many values as `expected` in a shape that differs only by size-1 dimensions."""
    return stored.shape != expected.shape and stored.squeeze().shape == expected.squeeze().shape


def _check_fits(state: dict[str, torch.Tensor], model: nn.Module, path: Path, spec: TeacherSpec,
                num_classes: int, in_channels: int) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}"
             for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches (file vs model)", shapes)) if keys]
    raise TeacherLoadError(
        f"architecture mismatch: {path} does not fit teacher {spec.name!r} "
        f"(arch {spec.arch}, num_classes={num_classes}, in_channels={in_channels}); " + "; ".join(parts))


class FrozenTeacher(nn.Module):
    """A teacher network that is always in eval mode, has no trainable parameters and returns constant logits."""

    def __init__(self, net: nn.Module, spec: TeacherSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        net.requires_grad_(False)
        net.eval()
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Ignored: a teacher's BatchNorm statistics must never move."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen net; a normal (non-inference) tensor, usable as a target in a student's graph."""
        with torch.inference_mode():
            out = self.net(x)
        # Inference tensors cannot be saved for backward; a clone made outside inference mode can.
        return out.clone()


def build_teacher(name: str, checkpoint: str | os.PathLike, *, num_classes: int, in_channels: int,
                  device: torch.device | str = "cpu") -> FrozenTeacher:
    """Build teacher `name`'s architecture, load its weights strictly from `checkpoint`, and freeze it on `device`."""
    spec = get_teacher(name)
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise _missing(path, spec)
    model = build_model(spec.arch, num_classes=num_classes, in_channels=in_channels, dataset=spec.dataset)
    state = _fix_layout(load_state_dict_file(path), model)
    _check_fits(state, model, path, spec, num_classes, in_channels)
    model.load_state_dict(state, strict=True)
    return FrozenTeacher(model, spec).to(device)


def save_teacher_checkpoint(model: nn.Module, path: str | os.PathLike, spec_name: str,
                            metrics: Mapping[str, Any]) -> Path:
    """Atomically save {"state_dict", "teacher", "metrics"} in a weights_only-loadable form; returns the absolute path."""
    if isinstance(model, FrozenTeacher):
        model = model.net
    plain_metrics: dict[str, float | str] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if not isinstance(value, (int, float, str)):
            raise TypeError(f"metric {key!r}={value!r} must be a number or a string")
        plain_metrics[str(key)] = value if isinstance(value, str) else float(value)
    blob = {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "teacher": str(spec_name), "metrics": plain_metrics}
    # A crash mid-write must never leave a truncated file under the name a run will load.
    return atomic_save(blob, Path(path).expanduser().resolve())
