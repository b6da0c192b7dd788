"""The search command's top-level keys as one typed table: what `--help` shows and what the driver validates.

Defaults stay where Hydra composes them (conf/config.yaml and the profiles), so `--help` shows
the defaults the command would really use; this table holds each key's meaning, type and
allowed values. `train.<field>` keys are TrainConfig's (trainables/config.py validates them;
their meanings are the field docstrings). A test keeps this table and config.yaml in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from search.errors import SearchInputError


@dataclass(frozen=True)
class Key:
    """One top-level key of the search command."""

    name: str
    """Dotted name as typed on the command line, e.g. trial.gpus."""
    meaning: str
    kind: str
    """int, float, bool, str or list[str]."""
    nullable: bool = False
    """null means "decided elsewhere" (the space's budget, CUDA detection...)."""
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    def check(self, value: Any) -> None:
        """Raise SearchInputError (one line naming the key) when `value` is not allowed."""
        if value is None:
            if self.nullable:
                return
            raise SearchInputError(f"{self.name}=null is not allowed; {self.name} must be {_article(self.kind)}")
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[self.kind]
        if not ok:
            raise SearchInputError(f"{self.name}={value!r} must be {_article(self.kind)}")
        if self.choices and value not in self.choices:
            raise SearchInputError(f"{self.name}={value!r} is not allowed; allowed: {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise SearchInputError(f"{self.name}={value!r} must be {_article(self.kind)} >= {self.minimum:g}")


def _article(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "list[str]": "a list of names, e.g. [a,b]"}[kind]


KEYS: tuple[Key, ...] = (
    Key("space", "the search space: a file spaces/<space>.yaml", "str"),
    Key("profile", "paper: the RSLAD setting on CIFAR-10; smoke: digits, small CNNs, a few epochs, teachers "
        "trained on first use (offline, minutes on a CPU)", "str"),
    Key("name", "experiment name (Ray folder, MLflow experiment, Optuna study); empty: "
        "<space>-<profile>-<YYYYmmdd-HHMMSS>", "str"),
    Key("num_samples", "trials; null: the space's budget for this profile (a space of choices only runs each "
        "distinct configuration once)", "int", nullable=True, minimum=1),
    Key("max_concurrent", "trials at once; null: the space's budget", "int", nullable=True, minimum=1),
    Key("seed", "seed of the Optuna sampler (each trial's own seed is train.seed)", "int", minimum=0),
    Key("storage", "Ray results and trial checkpoints: a folder, or s3://, gs:// on a cluster", "str"),
    Key("resume", "continue the search `name` from storage", "bool"),
    Key("dry_run", "check everything and print the plan (trials, concurrency, per-trial resources, teachers and "
        "where their weights are, data, expected trial-epochs, where results go), then exit 0 without starting "
        "Ray or writing anything (python -m search.teachers: which teachers it would train, and where)", "bool"),
    Key("verbose", "show the libraries' own messages (Ray, Tune, Optuna, MLflow) as they come; false: only the "
        "search's console and its warnings", "bool"),
    Key("scheduler", "asha: stop weak trials early on the space's metric; none: run every trial to the end; "
        "null: the space's choice", "str", nullable=True, choices=("asha", "none")),
    Key("rsl_cache", "trials share the teacher's logits on each epoch's clean batches, computed once per search "
        "(<storage>/<name>/rsl_cache; same losses up to fp16 rounding); false: every trial runs the teacher", "bool"),
    Key("tracking.uri", "MLflow tracking URI; a relative sqlite path is made absolute", "str"),
    Key("tracking.enabled", "record the search in MLflow", "bool"),
    Key("optuna.storage", "database of the search's Optuna study (study name = name), for optuna-dashboard: "
        "sqlite:///ABS/path.db, postgresql://..., mysql://...; empty: optuna.db beside a sqlite tracking store, "
        "else in a local storage folder (in memory when neither is local)", "str"),
    Key("ray.address", "empty: start a local Ray; auto: join the running cluster; or HOST:PORT", "str"),
    Key("ray.num_cpus", "local Ray only: CPUs to use (null: all)", "int", nullable=True, minimum=1),
    Key("trial.cpus", "CPUs per trial (Ray sets torch's threads from it)", "float", minimum=0),
    Key("trial.gpus", "GPUs per trial; fractions pack several students on one GPU (no memory limit is "
        "enforced); null: 1 if CUDA is visible here, else 0", "float", nullable=True, minimum=0),
    Key("trial.max_failures", "retries of a failed trial, each from its last checkpoint", "int", minimum=0),
    Key("trial.checkpoint_every", "epochs between checkpoints (the last epoch always checkpoints)", "int",
        minimum=1),
    Key("trial.reuse_workers", "the next trial runs in a finished trial's worker process (Tune's reuse_actors), "
        "where the dataset and the teacher are already loaded", "bool"),
    Key("teachers.auto_train", "train a missing teacher before the search (smoke profile: true)", "bool"),
    Key("teachers.epochs", "epochs of trained teachers (null: train.epochs)", "int", nullable=True, minimum=1),
    Key("teachers.names", "python -m search.teachers only: teachers to train (empty: every trainable teacher "
        "of train.dataset)", "list[str]"),
    Key("teachers.retrain", "python -m search.teachers only: train again even when weights exist", "bool"),
    Key("top_k", "rows of the final table", "int", minimum=1),
)
# Set by the chosen profile file, not by a person.
INTERNAL = ("profile_name",)


def value_at(cfg: Mapping[str, Any], dotted: str) -> Any:
    """cfg["a"]["b"] for "a.b" (KeyError when absent)."""
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


def flat_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of a composed config's leaves, `train` excluded (TrainConfig checks its own)."""
    out = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if name == "train" or name in INTERNAL:
            continue
        if isinstance(value, Mapping):
            out += flat_keys(value, f"{name}.")
        else:
            out.append(name)
    return out


def validate(cfg: Mapping[str, Any]) -> None:
    """Check every top-level key of a composed config against the table; one-line SearchInputError on the first problem."""
    for key in KEYS:
        if key.name == "profile":
            continue  # a config group: Hydra already refused an unknown profile; the composed config names it profile_name
        key.check(value_at(cfg, key.name))
