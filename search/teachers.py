"""Teacher weights for a search: find them, fetch them, or train them as Tune trials.

`python -m search.teachers profile=smoke [teachers.names=[digits_cnn_small_trades]]` trains
teachers (TRADES by default; the registry entry's method decides) and registers each one
in the MLflow model registry as `rslad-teacher-<name>` with its validation metrics. A search
resolves every teacher it may use before any trial starts: `teachers_dir/<name>.pt`, else the
MLflow model registry, else (profile=smoke) it trains the missing ones, else it stops with
an error that says how to provide them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from pathlib import Path
from typing import Any

from search import interrupt
from search.config import compose_config, resolve_paths
from search.errors import SearchInputError, run_cli
from search.ray_runtime import check_local_resources, start_ray, trial_resources
from search.storage import check_creatable, check_tracking_store, make_private
from trainables.config import NO_TEACHER, TrainConfig
from trainables.paths import sqlite_file
from trainables.teachers import TEACHERS, default_checkpoint_path, get_teacher

log = logging.getLogger("search.teachers")

REGISTERED_PREFIX = "rslad-teacher-"
ARTIFACT_DIR = "teacher"
EXPERIMENT = "teachers"


def checkpoint_for(name: str, train: dict[str, Any]) -> Path:
    """Where the trial will load teacher `name` from (train.teacher_checkpoint if it names this teacher)."""
    if train.get("teacher_checkpoint") and train.get("teacher") == name:
        return Path(train["teacher_checkpoint"])
    return default_checkpoint_path(name, train["teachers_dir"])


def teacher_train_config(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig dict that trains teacher `name`: the profile's base with the entry's arch, method and eps."""
    spec = get_teacher(name)
    base = dict(cfg["train"])
    if spec.dataset != base["dataset"]:
        raise SearchInputError(f"teacher {name!r} is for dataset {spec.dataset!r}, the config trains on "
                               f"{base['dataset']!r}; pick a profile or train.dataset that matches")
    base.update(student=spec.arch, method=spec.method, teacher=NO_TEACHER, teacher_checkpoint="",
                eps=spec.eps, epochs=cfg["teachers"]["epochs"] or base["epochs"])
    base["attack_step_size"] = min(base["attack_step_size"], spec.eps)
    return TrainConfig.from_dict(base).to_dict()


def registered_versions(tracking_uri: str, name: str) -> list:
    """The MLflow model registry's versions of teacher `name` ([] when none, or the store has none: a missing
    SQLite file is not opened, so nothing is created)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    db = sqlite_file(tracking_uri)
    if db is not None and not db.exists():
        return []
    try:
        return list(MlflowClient(tracking_uri).search_model_versions(f"name='{REGISTERED_PREFIX}{name}'"))
    except MlflowException:
        return []


def fetch_registered(name: str, dest: Path, tracking_uri: str) -> bool:
    """Download the newest registered version of teacher `name` from MLflow into dest; False if none."""
    versions = registered_versions(tracking_uri, name)
    if not versions:
        return False
    newest = max(versions, key=lambda v: int(v.version))
    import mlflow.artifacts

    dest.parent.mkdir(parents=True, exist_ok=True)
    got = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{newest.run_id}/{ARTIFACT_DIR}/{name}.pt",
                                              dst_path=str(dest.parent / f".{name}.download"),
                                              tracking_uri=tracking_uri)
    Path(got).replace(dest)
    log.info("teacher %s: version %s from the MLflow model registry -> %s", name, newest.version, dest)
    return True


def fetch_robustbench(name: str, dest: Path) -> bool:
    """Download a RobustBench teacher's weights into dest when robustbench is installed and online; False otherwise."""
    spec = get_teacher(name)
    if not spec.robustbench_id:
        return False
    try:
        from robustbench.utils import load_model
    except ImportError:
        log.info("teacher %s: robustbench is not installed; not downloading %s", name, spec.robustbench_id)
        return False
    try:
        model = load_model(model_name=spec.robustbench_id, dataset=spec.dataset, threat_model="Linf",
                           model_dir=str(dest.parent / "robustbench"))
    except Exception as err:  # noqa: BLE001  (offline, hub errors, ...: robustbench raises many kinds)
        log.warning("teacher %s: RobustBench download of %s failed: %s", name, spec.robustbench_id, err)
        return False
    from trainables.teachers import save_teacher_checkpoint

    save_teacher_checkpoint(model, dest, name, {})
    log.info("teacher %s: RobustBench %s -> %s", name, spec.robustbench_id, dest)
    return True


def how_to_provide(name: str, path: Path) -> str:
    """One line telling a person how to provide teacher `name`."""
    spec = get_teacher(name)
    ways = [f"train it: python -m search.teachers teachers.names=[{name}]",
            f"or copy its state dict to {path}",
            "or pass train.teacher_checkpoint=/abs/path.pt"]
    if spec.robustbench_id:
        ways.insert(0, f"download RobustBench '{spec.robustbench_id}' (cifar10, Linf) on a machine with internet "
                       f"and save its state_dict to {path}")
    return f"teacher {name!r} has no weights at {path} nor in the MLflow registry; " + "; ".join(ways)


def load_teacher(name: str, path: Path) -> None:
    """Build teacher `name` from `path` strictly on the CPU (a one-line TeacherLoadError if it does not fit)."""
    from trainables.data import IMAGE_SHAPES, NUM_CLASSES
    from trainables.teachers import build_teacher

    dataset = get_teacher(name).dataset
    build_teacher(name, path, num_classes=NUM_CLASSES[dataset], in_channels=IMAGE_SHAPES[dataset][0], device="cpu")


def ensure_teachers(plan: Any) -> None:
    """Make sure every teacher the search may use has weights on disk that load, before any trial starts."""
    cfg = plan.cfg
    missing, provided = [], []
    for name in plan.teachers:
        path = checkpoint_for(name, plan.base_train)
        if path.exists():
            continue  # loaded by the preflight
        if cfg["tracking"]["enabled"] and fetch_registered(name, path, cfg["tracking"]["uri"]):
            provided.append(name)
            continue
        if fetch_robustbench(name, path):
            provided.append(name)
            continue
        missing.append(name)
    if missing and not cfg["teachers"]["auto_train"]:
        raise SearchInputError(how_to_provide(missing[0], checkpoint_for(missing[0], plan.base_train)))
    if missing:
        log.info("training missing teacher(s) first: %s", ", ".join(missing))
        train_teachers(missing, cfg)
    for name in provided + missing:
        load_teacher(name, checkpoint_for(name, plan.base_train))


def train_teacher_trial(config: dict[str, Any]) -> None:
    """Tune trainable for one teacher: the ordinary trial on the teacher's own train config."""
    from trainables.ray_adapter import train_trial

    train_trial({"train": config["teacher"]["train"], "trial": config["trial"]})


def train_teachers(names: list[str], cfg: dict[str, Any]) -> dict[str, Path]:
    """Train `names` as Tune trials, save each best model as teachers_dir/<name>.pt, register it in MLflow."""
    from ray import tune

    from search.tracking import failed_reason
    from trainables.checkpoints import BEST_MODEL_FILE, load_model
    from trainables.teachers import save_teacher_checkpoint

    jobs = [{"name": n, "train": teacher_train_config(n, cfg)} for n in names]  # a mismatch is refused before Ray
    start_ray(cfg)
    make_private(cfg["storage"])
    trainable = tune.with_resources(train_teacher_trial, trial_resources(cfg))
    tuner = tune.Tuner(
        trainable,
        param_space={"teacher": tune.grid_search(jobs), "trial": {"checkpoint_every": 1}},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg["max_concurrent"] or len(jobs)),
        run_config=tune.RunConfig(name=f"teachers-{_dt.datetime.now():%Y%m%d-%H%M%S}",
                                  storage_path=cfg["storage"], verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    with interrupt.tune_running():
        results = tuner.fit()
    if interrupt.received():
        raise KeyboardInterrupt(interrupt.received())
    saved = {}
    for result in results:
        name = result.config["teacher"]["name"]
        reason = failed_reason(result)
        if reason or result.checkpoint is None:
            raise SearchInputError(f"training teacher {name!r} failed: {reason or 'no checkpoint was saved'}")
        with result.checkpoint.as_directory() as folder:
            model, train_cfg, meta = load_model(Path(folder) / BEST_MODEL_FILE)
        path = default_checkpoint_path(name, cfg["train"]["teachers_dir"])
        save_teacher_checkpoint(model, path, name, meta["metrics"])
        saved[name] = path
        log.info("teacher %s: val clean %.4f, val PGD %.4f (epoch %d) -> %s", name,
                 meta["metrics"].get("val_clean_acc", float("nan")), meta["metrics"].get("val_pgd_acc", float("nan")),
                 meta["epoch"], path)
        if cfg["tracking"]["enabled"]:
            register_teacher(name, path, train_cfg.to_dict(), meta, cfg["tracking"]["uri"])
    return saved


def register_teacher(name: str, path: Path, train: dict[str, Any], meta: dict, tracking_uri: str) -> str:
    """Log the teacher's weights and metrics in the 'teachers' experiment and register a model version."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from search.tracking import get_or_create_experiment

    client = MlflowClient(tracking_uri)
    exp_id = get_or_create_experiment(client, EXPERIMENT, tracking_uri)
    spec = get_teacher(name)
    run = client.create_run(exp_id, run_name=name, tags={"rslad.role": "teacher", "rslad.teacher": name,
                                                         "rslad.arch": spec.arch, "rslad.dataset": spec.dataset})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in train.items()],
                     metrics=[Metric(k, float(v), 0, int(meta["epoch"])) for k, v in meta["metrics"].items()])
    client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    client.set_terminated(run_id, "FINISHED")
    model_name = REGISTERED_PREFIX + name
    try:
        client.create_registered_model(model_name, description=f"RSLAD teacher {name} ({spec.arch}, {spec.method})")
    except MlflowException:
        pass  # already registered: add a version
    version = client.create_model_version(model_name, source=f"runs:/{run_id}/{ARTIFACT_DIR}", run_id=run_id,
                                          tags={k: str(v) for k, v in meta["metrics"].items()})
    return version.version


def describe_teachers(names: list[str], todo: list[str], cfg: dict[str, Any]) -> str:
    """What `python -m search.teachers dry_run=true` prints: each teacher, trained or kept, and where."""
    resources = trial_resources(cfg)
    epochs = cfg["teachers"]["epochs"] or cfg["train"]["epochs"]
    lines = [f"teachers of {cfg['train']['dataset']} (dry run: nothing was started or written)"]
    for name in names:
        spec = get_teacher(name)
        path = default_checkpoint_path(name, cfg["train"]["teachers_dir"])
        what = (f"trained: {spec.arch}, {spec.method}, eps {spec.eps:g}, {epochs} epochs" if name in todo
                else "kept: weights exist (teachers.retrain=true trains it again)")
        lines.append(f"  {name}: {what} -> {path}")
    if todo:
        at_once = cfg["max_concurrent"] or len(todo)
        lines.append(f"  {len(todo)} trial(s), {at_once} at once, each {resources['cpu']:g} CPU and "
                     f"{resources['gpu']:g} GPU; Ray results in {cfg['storage']}")
        lines.append("  registered in MLflow at " + (cfg["tracking"]["uri"] if cfg["tracking"]["enabled"]
                                                      else "(nowhere: tracking.enabled=false)"))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Train the named (or every trainable) teacher of the profile's dataset; --help, --cfg job and dry_run=true
    answer without training."""
    from search.help import read_command_line, render_cfg_job, render_help
    from search.keys import validate
    from search.quiet import quiet_libraries

    line = read_command_line(argv)
    if line.mode == "help":
        print(render_help(compose_config(line.overrides), command="search.teachers"), end="")
        return 0
    composed = compose_config(line.overrides)
    validate(composed)
    cfg = resolve_paths(composed)
    if line.mode == "cfg":
        print(render_cfg_job(cfg), end="")
        return 0
    quiet_libraries(cfg["verbose"])
    dataset = cfg["train"]["dataset"]
    names = list(cfg["teachers"]["names"]) or [n for n in TEACHERS.names()
                                                if get_teacher(n).dataset == dataset and get_teacher(n).source == "trained"]
    for n in names:
        TEACHERS.get(n)  # unknown names fail here, listing the known ones
    check_local_resources(cfg)
    check_creatable(Path(cfg["storage"]), f"storage={cfg['storage']}")
    todo = [n for n in names if cfg["teachers"]["retrain"] or not default_checkpoint_path(n, cfg["train"]["teachers_dir"]).exists()]
    if todo:
        # Found now, not after Ray started or hours of training: a teacher of another dataset, an unwritable
        # weights folder, a tracking store that cannot take the registration.
        for n in todo:
            teacher_train_config(n, cfg)
        check_creatable(Path(cfg["train"]["teachers_dir"]), f"train.teachers_dir={cfg['train']['teachers_dir']}")
        check_tracking_store(cfg)
    if cfg["dry_run"]:
        print(describe_teachers(names, todo, cfg), end="")
        return 0
    if not todo:
        print(f"every teacher already has weights in {cfg['train']['teachers_dir']}: {', '.join(names)} (teachers.retrain=true to train again)")
        return 0
    saved = train_teachers(todo, cfg)
    for name, path in saved.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    interrupt.install()
    sys.exit(run_cli(main))
