"""SearchConfig: the search command's settings as frozen dataclasses, the schema Hydra composes into.

Each field's docstring is its meaning (what `--help` prints), its type and metadata are what the
driver checks; defaults live here once and reach Hydra as a generated config node, so a profile
(`conf/profile/*.yaml`) and the command line override them and nothing restates them. `train`
is a TrainConfig (trainables/config.py, the same pattern). Hydra is used in this module only.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import inspect
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainables.config import TrainConfig
from trainables.errors import UserError
from trainables.paths import absolute, absolute_tracking_uri

CONFIG_MODULE = "search.conf"
PROFILES_DIR = Path(__file__).parent / "conf" / "profile"


class SearchInputError(UserError):
    """Something the person asked for cannot be done (e.g. resume of a search that does not exist)."""


class SearchConfigError(SearchInputError):
    """Bad command-line override or config value; the message is one line naming the key."""


def _min(value: float) -> dict[str, Any]:
    return {"min": value}


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records the search."""

    uri: str = "sqlite:///mlruns.db"
    """MLflow tracking URI; a relative sqlite path is made absolute"""
    enabled: bool = True
    """record the search in MLflow"""


@dataclass(frozen=True)
class OptunaConfig:
    """Where the search's Optuna study lives."""

    storage: str = ""
    """database of the search's Optuna study (study name = name), for optuna-dashboard: sqlite:///ABS/path.db,
    postgresql://..., mysql://...; empty: optuna.db beside a sqlite tracking store, else in a local storage folder
    (in memory when neither is local)"""


@dataclass(frozen=True)
class RayConfig:
    """Which Ray runs the trials."""

    address: str = ""
    """empty: start a local Ray; auto: join the running cluster; or HOST:PORT"""
    num_cpus: int | None = field(default=None, metadata=_min(1))
    """local Ray only: CPUs to use (null: all)"""


@dataclass(frozen=True)
class TrialConfig:
    """What each trial gets and how it is kept."""

    cpus: float = field(default=1, metadata=_min(0))
    """CPUs per trial (Ray sets torch's threads from it)"""
    gpus: float | None = field(default=None, metadata=_min(0))
    """GPUs per trial; fractions pack several students on one GPU (no memory limit is enforced); null: 1 if CUDA is
    visible here, else 0"""
    max_failures: int = field(default=2, metadata=_min(0))
    """retries of a failed trial, each from its last checkpoint"""
    checkpoint_every: int = field(default=1, metadata=_min(1))
    """epochs between checkpoints (the last epoch always checkpoints)"""
    reuse_workers: bool = True
    """the next trial runs in a finished trial's worker process (Tune's reuse_actors), where the dataset and the
    teacher are already loaded"""


@dataclass(frozen=True)
class TeachersConfig:
    """How missing teachers are provided."""

    auto_train: bool = False
    """train a missing teacher before the search (smoke profile: true)"""
    epochs: int | None = field(default=None, metadata=_min(1))
    """epochs of trained teachers (null: train.epochs)"""
    names: tuple[str, ...] = ()
    """python -m search.teachers only: teachers to train (empty: every trainable teacher of train.dataset)"""
    retrain: bool = False
    """python -m search.teachers only: train again even when weights exist"""


@dataclass(frozen=True)
class ReplicateConfig:
    """What `python -m search.replicate` trains again: the search's finalists with new seeds."""

    top_k: int = field(default=3, metadata=_min(1))
    """python -m search.replicate only: how many of the search's best trials (by its metric) to replicate"""
    seeds: int = field(default=3, metadata=_min(2))
    """python -m search.replicate only: new seeds per finalist: replicate i (1..seeds) adds i to train.seed and to the
    epoch order seed (initial weights, batches, augmentation, attack noise change; the validation split does not);
    each runs its whole schedule"""


@dataclass(frozen=True)
class SearchConfig:
    """Everything `python -m search.run` (and `search.teachers`) is told; `train` is the base TrainConfig."""

    space: str = "alpha"
    """the search space: a file spaces/<space>.yaml"""
    profile: str = "paper"
    """paper: the RSLAD setting on CIFAR-10; smoke: digits, small CNNs, a few epochs, teachers trained on first use
    (offline, minutes on a CPU)"""
    name: str = ""
    """experiment name (Ray folder, MLflow experiment, Optuna study); empty: <space>-<profile>-<YYYYmmdd-HHMMSS>"""
    num_samples: int | None = field(default=None, metadata=_min(1))
    """trials; null: the space's budget for this profile (a space of choices only runs each distinct configuration
    once)"""
    max_concurrent: int | None = field(default=None, metadata=_min(1))
    """trials at once; null: the space's budget"""
    seed: int = field(default=0, metadata=_min(0))
    """seed of the Optuna sampler (each trial's own seed is train.seed)"""
    storage: str = "ray_results"
    """Ray results and trial checkpoints: a folder, or s3://, gs:// on a cluster"""
    resume: bool = False
    """continue the search `name` from storage"""
    dry_run: bool = False
    """check everything and print the plan (trials, concurrency, per-trial resources, teachers and where their
    weights are, data, expected trial-epochs, where results go), then exit 0 without starting Ray or writing anything
    (python -m search.teachers: which teachers it would train, and where)"""
    verbose: bool = False
    """show the libraries' own messages (Ray, Tune, Optuna, MLflow) as they come; false: only the search's console
    and its warnings"""
    scheduler: str | None = field(default=None, metadata={"choices": ("asha", "none")})
    """asha: stop weak trials early on the space's metric; none: run every trial to the end; null: the space's
    choice"""
    rsl_cache: bool = True
    """trials share the teacher's logits on each epoch's clean batches, computed once per search
    (<storage>/<name>/rsl_cache; same losses up to fp16 rounding); false: every trial runs the teacher"""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optuna: OptunaConfig = field(default_factory=OptunaConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    replicate: ReplicateConfig = field(default_factory=ReplicateConfig)
    top_k: int = field(default=5, metadata=_min(1))
    """rows of the final table"""
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, composed: Mapping[str, Any]) -> SearchConfig:
        """The typed config of a composed dict: every search key checked (one-line SearchConfigError naming the
        first bad one), then `train` by TrainConfig (its own ConfigError)."""
        values = {k: v for k, v in composed.items() if k not in ("profile_name", "train")}
        values["profile"] = composed.get("profile_name", cls.profile)
        config = _build(cls, values, "")
        return dataclasses.replace(config, train=TrainConfig.from_dict(composed["train"]))

    def to_dict(self) -> dict[str, Any]:
        """Plain containers in the composed layout (lists, `profile_name`), as `--cfg job` prints and Ray pickles."""
        out = _plain(dataclasses.asdict(self))
        out.pop("profile")
        out["profile_name"] = self.profile
        out["train"] = self.train.to_dict()
        return out

    def resolved(self, base: Path | None = None) -> SearchConfig:
        """Every path the trials or Ray jobs see made absolute in the driver (trials run in other cwds)."""
        train = self.train
        return dataclasses.replace(
            self, storage=absolute(self.storage, base),
            tracking=dataclasses.replace(self.tracking, uri=absolute_tracking_uri(self.tracking.uri, base)),
            optuna=dataclasses.replace(self.optuna, storage=absolute_tracking_uri(self.optuna.storage, base)),
            train=train.replace(**{k: absolute(getattr(train, k), base)
                                   for k in ("data_dir", "teachers_dir", "teacher_checkpoint", "rsl_cache_dir")}))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """cls(**values) with each leaf checked against its field's type and metadata; nested sections recursively."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "train" or f.name not in values:
            continue
        key = f"{prefix}{f.name}"
        value = values[f.name]
        section = _SECTIONS.get(f.type)
        if section is not None:
            if not isinstance(value, Mapping):
                raise SearchConfigError(f"{key}={value!r} must be a group of keys ({key}.<key>=...)")
            kwargs[f.name] = _build(section, value, f"{key}.")
            continue
        check_value(key, value, f)
        kwargs[f.name] = tuple(value) if f.type.startswith("tuple") else value
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {"TrackingConfig": TrackingConfig, "OptunaConfig": OptunaConfig,
                              "RayConfig": RayConfig, "TrialConfig": TrialConfig, "TeachersConfig": TeachersConfig,
                              "ReplicateConfig": ReplicateConfig}
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "tuple[str, ...]": "a list of names, e.g. [a,b]"}


def check_value(key: str, value: Any, f: dataclasses.Field) -> None:
    """Raise SearchConfigError (one line naming the key) when `value` does not fit field `f` (type, choices, minimum)."""
    kind, _, none = str(f.type).partition(" | ")
    if value is None:
        if none == "None":
            return
        raise SearchConfigError(f"{key}=null is not allowed; {key} must be {_KINDS[kind]}")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "tuple[str, ...]": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise SearchConfigError(f"{key}={value!r} must be {_KINDS[kind]}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SearchConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(choices)}")
    minimum = f.metadata.get("min")
    if minimum is not None and value < minimum:
        raise SearchConfigError(f"{key}={value!r} must be {_KINDS[kind]} >= {minimum:g}")


# --- the schema, read back for --help -----------------------------------------------------------------------
def search_keys() -> list[tuple[str, dataclasses.Field]]:
    """Every search key as (dotted name, field), in declaration order; `train` excluded (TrainConfig's own)."""
    out = []
    for f in dataclasses.fields(SearchConfig):
        if f.name == "train":
            continue
        section = _SECTIONS.get(f.type)
        out += [(f"{f.name}.{g.name}", g) for g in dataclasses.fields(section)] if section else [(f.name, f)]
    return out


def search_key_docs() -> dict[str, str]:
    """Dotted search key -> its meaning (the field's docstring)."""
    docs = {}
    for cls in (SearchConfig, *_SECTIONS.values()):
        prefix = "" if cls is SearchConfig else next(
            f.name for f in dataclasses.fields(SearchConfig) if _SECTIONS.get(f.type) is cls) + "."
        docs.update({f"{prefix}{k}": v for k, v in field_docs(cls).items()})
    return docs


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field -> its docstring (the string right after the field in the class body), whitespace folded."""
    tree = ast.parse(Path(inspect.getfile(cls)).read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs = {}
    for stmt, nxt in zip(node.body, node.body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def profiles() -> list[str]:
    """The profiles a command line may name (conf/profile/*.yaml)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


# --- Hydra --------------------------------------------------------------------------------------------------
def _store_defaults() -> None:
    # The search keys and the `train` node come from the dataclasses, so every key can be overridden
    # (Hydra refuses keys it does not know) without restating a default in YAML.
    defaults = SearchConfig().to_dict()
    defaults.pop("profile_name")
    ConfigStore.instance().store(name="search_defaults", node=defaults)


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose the defaults, the profile and the overrides with Hydra; plain, resolved containers (unchecked)."""
    _store_defaults()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(version_base="1.3", config_module=CONFIG_MODULE):
            cfg = compose(config_name="config", overrides=list(overrides))
        # Plain containers only: nothing Hydra/OmegaConf-typed may reach Ray.
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        raise SearchConfigError(explain(str(err))) from None
    finally:
        GlobalHydra.instance().clear()


def load_config(overrides: Sequence[str] = (), cwd: Path | None = None) -> SearchConfig:
    """The checked SearchConfig of these overrides, with every path absolute (relative to `cwd`)."""
    return SearchConfig.from_dict(compose_config(overrides)).resolved(cwd)


def explain(message: str) -> str:
    """Hydra's multi-line error as one line that names the key and what is allowed."""
    unknown = re.search(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        if key.startswith("train."):
            return f"unknown key {key!r}; allowed train keys: {', '.join(TrainConfig().to_dict())}"
        known = ", ".join([*(f.name for f in dataclasses.fields(SearchConfig) if f.name not in ("train", "profile")),
                           "profile", "train.<field>"])
        return f"unknown key {key!r}; allowed keys: {known}"
    missing = re.search(r"Could not find '([^/']+)/([^']+)'.*?Available options in '[^']+':\s*(.*?)\s*Config search path", message, re.S)
    if missing:
        group, value, options = missing.groups()
        return f"{group}={value!r} not found; allowed: {', '.join(options.split())}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "Set the environment"))]
    return " ".join(lines)


def default_name(space: str, profile: str) -> str:
    """Experiment name from space, profile and the time: alpha-smoke-20261125-130201."""
    return f"{space}-{profile}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
