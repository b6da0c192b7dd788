"""Where a search's teacher weights come from, in one order: a file, the MLflow registry, RobustBench, training.

The preflight asks `source_of` (nothing is fetched, trained or written: it says where the weights
will come from, and loads those already on disk); `provide` walks the same order before Ray starts
the search and loads each teacher it provided. Training runs the teachers as Tune trials
(`train_teachers`, also what `python -m search.teachers` calls) and registers each one in MLflow.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable

from search import driver
from search.config import SearchConfig, SearchInputError
from search.storage import check_creatable, make_private
from search.tracking import (
    failed_reason,
    fetch_registered,
    register_teacher_model,
    registered_versions,
)
from trainables.checkpoints import BEST_MODEL_FILE, load_model
from trainables.config import NO_TEACHER, TrainConfig
from trainables.data import IMAGE_SHAPES, NUM_CLASSES
from trainables.ray_adapter import train_trial
from trainables.shipping import ShippedFiles
from trainables.teachers import (
    build_teacher,
    checkpoint_path,
    default_checkpoint_path,
    get_teacher,
    how_to_provide,
    save_teacher_checkpoint,
)

log = logging.getLogger("search")

SOURCES = ("file", "registry", "robustbench", "train")
"""Where weights come from, in the order the driver tries them."""


def missing_message(name: str, path: Path) -> str:
    """One line telling a person that teacher `name` is nowhere, and how to provide it."""
    return (f"teacher {name!r} has no weights at {path} nor in the MLflow registry; "
            f"{how_to_provide(path, get_teacher(name))}")


def load_teacher(name: str, path: Path) -> None:
    """Build teacher `name` from `path` strictly on the CPU (a one-line TeacherLoadError if it does not fit)."""
    dataset = get_teacher(name).dataset
    build_teacher(name, path, num_classes=NUM_CLASSES[dataset], in_channels=IMAGE_SHAPES[dataset][0], device="cpu")


def source_of(name: str, path: Path, cfg: SearchConfig) -> str | None:
    """The first source in SOURCES that has (or will make) teacher `name`'s weights; None when none does.

    Nothing is fetched or written: "registry" means a registered version exists, "robustbench" that the
    entry is in the zoo and robustbench is installed, "train" that teachers.auto_train is on.
    """
    if path.exists():
        return "file"
    if cfg.tracking.enabled and registered_versions(cfg.tracking.uri, name):
        return "registry"
    if get_teacher(name).robustbench_id and importlib.util.find_spec("robustbench") is not None:
        return "robustbench"
    return "train" if cfg.teachers.auto_train else None


def provide(names: list[str], train: dict[str, Any], cfg: SearchConfig) -> None:
    """Make sure each teacher in `names` has weights on disk that load (for the base TrainConfig dict `train`),
    before any trial starts."""
    fetchers: dict[str, Callable[[str, Path], bool]] = {
        "registry": lambda n, p: cfg.tracking.enabled and fetch_registered(n, p, cfg.tracking.uri),
        "robustbench": fetch_robustbench,
    }
    missing, provided = [], []
    for name in names:
        path = checkpoint_path(name, train)
        if path.exists():
            continue  # loaded by the preflight
        if any(fetchers[source](name, path) for source in SOURCES if source in fetchers):
            provided.append(name)
        else:
            missing.append(name)
    if missing and not cfg.teachers.auto_train:
        raise SearchInputError(missing_message(missing[0], checkpoint_path(missing[0], train)))
    if missing:
        log.info("training missing teacher(s) first: %s", ", ".join(missing))
        train_teachers(missing, cfg)
    for name in provided + missing:
        load_teacher(name, checkpoint_path(name, train))


def fetch_robustbench(name: str, dest: Path) -> bool:
    """Download a RobustBench teacher's weights into dest when robustbench is installed and online; False otherwise."""
    spec = get_teacher(name)
    if not spec.robustbench_id:
        return False
    try:
        from robustbench.utils import (
            load_model as load_robustbench,  # optional, heavy: only when a teacher needs it
        )
    except ImportError:
        log.info("teacher %s: robustbench is not installed; not downloading %s", name, spec.robustbench_id)
        return False
    try:
        model = load_robustbench(model_name=spec.robustbench_id, dataset=spec.dataset, threat_model="Linf",
                                 model_dir=str(dest.parent / "robustbench"))
    except Exception as err:  # noqa: BLE001  (offline, hub errors, ...: robustbench raises many kinds)
        log.warning("teacher %s: RobustBench download of %s failed: %s", name, spec.robustbench_id, err)
        return False
    save_teacher_checkpoint(model, dest, name, {})
    log.info("teacher %s: RobustBench %s -> %s", name, spec.robustbench_id, dest)
    return True


# --- training teachers --------------------------------------------------------------------------------------
def teacher_train_config(name: str, cfg: SearchConfig) -> dict[str, Any]:
    """The TrainConfig dict that trains teacher `name`: the profile's base with the entry's arch, method and eps."""
    spec = get_teacher(name)
    base = cfg.train.to_dict()
    if spec.dataset != base["dataset"]:
        raise SearchInputError(f"teacher {name!r} is for dataset {spec.dataset!r}, the config trains on "
                               f"{base['dataset']!r}; pick a profile or train.dataset that matches")
    base.update(student=spec.arch, method=spec.method, teacher=NO_TEACHER, teacher_checkpoint="",
                eps=spec.eps, epochs=cfg.teachers.epochs or base["epochs"])
    base["attack_step_size"] = min(base["attack_step_size"], spec.eps)
    return TrainConfig.from_dict(base).to_dict()


def train_teacher_trial(config: dict[str, Any], shipped: ShippedFiles | None = None) -> None:
    """Tune trainable for one teacher: the ordinary trial on the teacher's own train config."""
    train_trial({"train": config["teacher"]["train"], "trial": config["trial"]}, shipped)


def train_teachers(names: list[str], cfg: SearchConfig) -> dict[str, Path]:
    """Train `names` as Tune trials, save each best model as teachers_dir/<name>.pt, register it in MLflow."""
    from ray import tune  # heavy: only when teachers are trained

    jobs = [{"name": n, "train": teacher_train_config(n, cfg)} for n in names]  # a mismatch is refused before Ray
    driver.start_ray(cfg, shared={"storage": cfg.storage})
    make_private(cfg.storage)
    trainable = driver.trial_function(train_teacher_trial, cfg, [job["train"] for job in jobs])
    tuner = tune.Tuner(
        trainable,
        param_space={"teacher": tune.grid_search(jobs), "trial": {"checkpoint_every": 1}},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent or len(jobs)),
        run_config=tune.RunConfig(name=f"teachers-{_dt.datetime.now():%Y%m%d-%H%M%S}",
                                  storage_path=cfg.storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    with driver.tune_running():
        results = tuner.fit()
    if driver.received():
        raise KeyboardInterrupt(driver.received())
    saved = {}
    for result in results:
        name = result.config["teacher"]["name"]
        reason = failed_reason(result)
        if reason or result.checkpoint is None:
            raise SearchInputError(f"training teacher {name!r} failed: {reason or 'no checkpoint was saved'}")
        with result.checkpoint.as_directory() as folder:
            model, train_cfg, meta = load_model(Path(folder) / BEST_MODEL_FILE)
        path = default_checkpoint_path(name, cfg.train.teachers_dir)
        save_teacher_checkpoint(model, path, name, meta["metrics"])
        saved[name] = path
        log.info("teacher %s: val clean %.4f, val PGD %.4f (epoch %d) -> %s", name,
                 meta["metrics"].get("val_clean_acc", float("nan")), meta["metrics"].get("val_pgd_acc", float("nan")),
                 meta["epoch"], path)
        if cfg.tracking.enabled:
            register_teacher_model(name, path, train_cfg.to_dict(), meta, cfg.tracking.uri)
    return saved


def check_teachers_dir(cfg: SearchConfig) -> None:
    """The teachers' folder can take trained weights (probed, nothing written)."""
    check_creatable(Path(cfg.train.teachers_dir), f"train.teachers_dir={cfg.train.teachers_dir}")
