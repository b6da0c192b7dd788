"""TrainConfig: the one validated description of a training run (defaults = RSLAD paper)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainables.errors import UserError
from trainables.methods import METHODS
from trainables.models import MODELS
from trainables.recipes import RECIPES
from trainables.schema import DATASETS, NO_TEACHER, RSL_SOURCES, SAT_ATTACK_MODES, VAL_ATTACKS
from trainables.teachers import TEACHERS


class ConfigError(UserError):
    """A config value is missing, unknown or out of range; the message names the key."""


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; defaults reproduce RSLAD on CIFAR-10 (ResNet-18 from WRN-34-10)."""

    # --- data -------------------------------------------------------------------------
    dataset: str = "cifar10"
    """Dataset name: cifar10, cifar100 (torchvision files in data_dir) or digits (scikit-learn, offline)."""
    data_dir: str = "data"
    """Folder holding the torchvision dataset files; make it absolute before handing to a remote worker."""
    download: bool = False
    """Let torchvision download a missing dataset (needs internet); off, a missing dataset is an error."""
    val_size: int = field(default=1000, metadata=_range(0))
    """Images carved from the training set (seeded by data_seed) for model selection; 0 selects on the test set as the reference code does."""
    train_subset: int = field(default=0, metadata=_range(0))
    """Use only the first N (shuffled, seeded) training images; 0 uses them all. For quick runs."""
    data_seed: int = field(default=0, metadata=_range(0))
    """Seed of the validation split (and train_subset), and of every epoch's order and augmentation unless order_seed is set."""
    order_seed: int = field(default=-1, metadata=_range(-1))
    """Seed of every epoch's order and augmentation (crops, flips); -1: data_seed. Replicates set it (with seed) so that a new seed changes the batches but not the validation split."""
    augment: bool = True
    """RandomCrop(pad 4) + horizontal flip on the training batches (flip is skipped for digits)."""

    # --- models -------------------------------------------------------------------------
    student: str = "resnet18"
    """Student architecture, a name from trainables.models.list_models()."""
    teacher: str = "wrn34_10_trades"
    """Teacher entry from trainables.teachers.list_teachers(), or 'none' for methods without one."""
    teacher_checkpoint: str = ""
    """Path of the teacher's weights; empty means teachers_dir/<teacher>.pt."""
    teachers_dir: str = "teachers"
    """Folder of teacher checkpoints named <teacher>.pt (the search driver makes it absolute)."""

    # --- method -------------------------------------------------------------------------
    recipe: str = ""
    """A paper row from trainables.recipes.list_recipes() that this config follows (method, schedule, knobs), or empty; fields contradicting it are refused."""
    recipe_scale: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    """Length of the recipe's schedule relative to its published one (epochs and warm-up scale by it; 1.0 = the paper's); only with a recipe."""
    method: str = "rslad"
    """Training method, a name from trainables.methods.list_methods()."""
    alpha: float = field(default=5 / 6, metadata=_range(0.0, 1.0))
    """RSLAD weight of the adversarial term; k = alpha/(1-alpha) is the supplement's ratio (5/6 -> k=5)."""
    rsl_source: str = field(default="nat-nat-nat", metadata={"choices": RSL_SOURCES})
    """Where RSLAD's soft labels (T1, T2, T3) come from: teacher on clean (nat) or adversarial (adv) input."""
    kl_scale: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    """Factor on RSLAD's batch-mean KL; the reference's 1/10 is part of its effective learning rate."""
    trades_beta: float = field(default=6.0, metadata=_range(0.0))
    """TRADES weight of KL(S(x) || S(x'))."""
    sat_attack_mode: str = field(default="train", metadata={"choices": SAT_ATTACK_MODES})
    """SAT's inner attack with the student in train mode (BatchNorm batch statistics, as Madry's cifar10_challenge) or eval mode."""
    ard_alpha: float = field(default=1.0, metadata=_range(0.0, 1.0))
    """ARD/IAD weight of the distillation term against (1 - ard_alpha) * CE."""
    ard_temperature: float = field(default=30.0, metadata=_range(0.0, lo_open=True))
    """ARD softmax temperature t (the loss carries t^2)."""
    iad_beta: float = field(default=0.1, metadata=_range(0.0))
    """IAD exponent of the teacher's confidence: w = P_T(x')[y] ** iad_beta."""
    iad_warmup_epochs: int = field(default=60, metadata=_range(0))
    """IAD trains on its distillation KL and CE alone (t = 1, KL summed over classes) for this many epochs, then adds the introspective term."""
    awp_gamma: float = field(default=0.01, metadata=_range(0.0))
    """AWP (sat_awp, trades_awp): each weight matrix is perturbed by awp_gamma times its own norm; 0.01 is AT-AWP's CIFAR-10 L-inf value (TRADES-AWP's script uses 0.005); 0 turns AWP off."""
    awp_warmup: int = field(default=0, metadata=_range(0))
    """AWP starts after this many epochs of plain SAT/TRADES; AT-AWP uses 0, TRADES-AWP's script 10 of 200 (its epochs count from 1, so 9 here)."""

    # --- optimisation -------------------------------------------------------------------
    epochs: int = field(default=300, metadata=_range(1))
    """Training epochs."""
    batch_size: int = field(default=128, metadata=_range(1))
    """Training batch size."""
    lr: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    """SGD learning rate."""
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    """SGD momentum."""
    weight_decay: float = field(default=2e-4, metadata=_range(0.0))
    """SGD weight decay."""
    lr_milestones: tuple[int, ...] = (215, 260, 285)
    """Epochs where lr is multiplied by lr_gamma, stated for an lr_milestones_ref-epoch schedule and rescaled to `epochs`."""
    lr_milestones_ref: int = field(default=300, metadata=_range(1))
    """Schedule length the milestones are stated for; set it equal to epochs to use them as absolute epochs."""
    lr_gamma: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    """Learning-rate decay factor at each milestone."""

    # --- threat model and attacks -------------------------------------------------------
    eps: float = field(default=8 / 255, metadata=_range(0.0, 1.0))
    """L-inf radius of training and validation attacks, in [0,1] pixel units."""
    attack_steps: int = field(default=10, metadata=_range(1))
    """Steps of the training (inner) attack."""
    attack_step_size: float = field(default=2 / 255, metadata=_range(0.0, lo_open=True))
    """Step size of the training attack."""
    val_attack: str = field(default="pgd", metadata={"choices": VAL_ATTACKS})
    """Attack that scores validation (val_pgd_acc) and so picks the best checkpoint: 'pgd' (cheap PGD below) or an evaluation column (pgd_trades with val_size=0 is the reference's rule)."""
    val_attack_steps: int = field(default=10, metadata=_range(1))
    """Steps of the cheap validation PGD (val_attack='pgd': CE, uniform start, step attack_step_size)."""
    val_batch_size: int = field(default=512, metadata=_range(1))
    """Batch size for validation."""

    # --- runtime ------------------------------------------------------------------------
    seed: int = field(default=0, metadata=_range(0))
    """Seed of weights init and attack noise (python, numpy, torch are seeded in one place)."""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'."""
    amp: bool = False
    """On CUDA: bf16 autocast for training and the inner attack (evaluation attacks stay fp32). Off by default: it
    changes the numbers (5.5 % of x' elements per RSLAD step) and gave no speed-up at the paper's batch of 128 on an
    H200 (README, Performance)."""
    channels_last: bool = True
    """On CUDA: channels_last memory format for models and batches."""
    cudnn_benchmark: bool = True
    """On CUDA: let cuDNN pick the fastest convolution algorithms."""
    num_threads: int = field(default=0, metadata=_range(0))
    """torch CPU threads; 0 leaves torch's default (Ray sets it from the trial's CPU request)."""
    rsl_cache_dir: str = ""
    """Folder where a search's trials share the teacher's per-epoch logits on clean batches (computed once, then read); empty: the teacher runs on every batch."""

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build and validate a config; unknown keys and bad values raise ConfigError naming the key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown TrainConfig key {unknown[0]!r}; known keys: {', '.join(known)}"
            )
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
        cfg = cls(**coerced)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (tuples as lists), safe for YAML/JSON/MLflow."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Check ranges, choices and names against the registries; raise ConfigError on the first problem."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "range" in f.metadata:
                lo, hi, lo_open = f.metadata["range"]
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{f.name}={value} must be a finite number")
                if lo is not None and (value < lo or (lo_open and value == lo)):
                    bound = f"> {lo}" if lo_open else f">= {lo}"
                    span = f"{bound}" + (f" and <= {hi}" if hi is not None else "")
                    raise ConfigError(f"{f.name}={value} out of range; allowed: {span}")
                if hi is not None and value > hi:
                    raise ConfigError(f"{f.name}={value} out of range; allowed: <= {hi}")
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                raise ConfigError(
                    f"{f.name}={value!r} is not allowed; allowed: {', '.join(f.metadata['choices'])}"
                )
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset={self.dataset!r} is not allowed; allowed: {', '.join(DATASETS)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
        if any(m < 0 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ConfigError(f"lr_milestones={list(self.lr_milestones)} must be increasing epochs >= 0")
        if self.recipe == "" and self.recipe_scale != 1.0:
            raise ConfigError(f"recipe_scale={self.recipe_scale} needs a recipe; allowed: recipe_scale=1.0 without one")
        if self.attack_step_size > self.eps > 0 and self.attack_steps > 1:
            raise ConfigError(
                f"attack_step_size={self.attack_step_size} is larger than eps={self.eps}; allowed: <= eps"
            )
        _check_name("student", self.student, MODELS.names())
        _check_name("method", self.method, METHODS.names())
        if self.eps == 0 and METHODS.get(self.method).attacks:
            attacking = [m for m in METHODS.names() if METHODS.get(m).attacks]
            raise ConfigError(f"eps={self.eps} with method={self.method!r} trains without an attack; "
                              f"allowed: eps > 0 for {', '.join(attacking)} (or method=natural)")
        if self.teacher != NO_TEACHER:
            _check_name("teacher", self.teacher, TEACHERS.names() + [NO_TEACHER])
        if METHODS.get(self.method).needs_teacher:
            if self.teacher == NO_TEACHER:
                raise ConfigError(f"method={self.method!r} needs a teacher; teacher='none' is not allowed")
            spec = TEACHERS.get(self.teacher)
            if spec.dataset != self.dataset:
                allowed = [n for n in TEACHERS.names() if TEACHERS.get(n).dataset == self.dataset]
                raise ConfigError(f"teacher={self.teacher!r} is a {spec.dataset} teacher but dataset={self.dataset!r}; "
                                  f"allowed: {', '.join(allowed)}")
        if self.recipe:
            _check_name("recipe", self.recipe, RECIPES.names())
            _check_recipe(self, RECIPES.get(self.recipe).fields(self.recipe_scale))

    @property
    def uses_teacher(self) -> bool:
        """Whether the chosen method distils from a teacher."""
        return METHODS.get(self.method).needs_teacher

    @property
    def epoch_order_seed(self) -> int:
        """The seed of every epoch's order and augmentation: order_seed, or data_seed when it is -1."""
        return self.data_seed if self.order_seed < 0 else self.order_seed

    def milestone_epochs(self) -> list[int]:
        """lr_milestones rescaled from lr_milestones_ref to this run's epochs."""
        scale = self.epochs / self.lr_milestones_ref
        return [int(round(m * scale)) for m in self.lr_milestones]


def _check_recipe(cfg: TrainConfig, wanted: Mapping[str, Any]) -> None:
    """Refuse a config whose fields contradict its recipe label (the label must never lie)."""
    for key, want in wanted.items():
        got = getattr(cfg, key)
        same = math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12) if isinstance(want, float) else got == want
        if not same:
            raise ConfigError(f"{key}={list(got) if isinstance(got, tuple) else got!r} contradicts recipe={cfg.recipe!r}, "
                              f"which sets {key}={list(want) if isinstance(want, tuple) else want!r}; allowed: "
                              f"leave {key} to the recipe, or drop the recipe")


def _check_name(key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not registered; allowed: {', '.join(allowed)}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert YAML/CLI/Tune values to the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{key}={value!r} must be a list of integers")
        return tuple(_coerce(key, v, int) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def config_fields() -> list[str]:
    """Names of every TrainConfig field (for space-key validation)."""
    return [f.name for f in dataclasses.fields(TrainConfig)]
