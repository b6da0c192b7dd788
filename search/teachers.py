"""`python -m search.teachers`: train a dataset's teachers before a search, and register them in MLflow.

`python -m search.teachers profile=smoke [teachers.names=[digits_cnn_small_trades]]` trains
teachers (TRADES by default; the registry entry's method decides) as Tune trials and registers
each one in the MLflow model registry as `rslad-teacher-<name>` with its validation metrics. A
search provides every teacher it may use itself before any trial starts (search.teacher_weights:
`teachers_dir/<name>.pt`, else the MLflow model registry, else RobustBench, else, with
teachers.auto_train, training), or stops with an error that says how to provide them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from search import driver
from search.cli import answer_help_or_cfg, read_command_line, run_cli
from search.config import SearchConfig, load_config
from search.storage import check_creatable
from search.teacher_weights import (
    check_teachers_dir,
    teacher_train_config,
    train_teachers,
)
from search.tracking import check_tracking_store
from trainables.teachers import TEACHERS, default_checkpoint_path, get_teacher


def describe_teachers(names: list[str], todo: list[str], cfg: SearchConfig) -> str:
    """What `python -m search.teachers dry_run=true` prints: each teacher, trained or kept, and where."""
    resources = driver.trial_resources(cfg)
    epochs = cfg.teachers.epochs or cfg.train.epochs
    lines = [f"teachers of {cfg.train.dataset} (dry run: nothing was started or written)"]
    for name in names:
        spec = get_teacher(name)
        path = default_checkpoint_path(name, cfg.train.teachers_dir)
        what = (f"trained: {spec.arch}, {spec.method}, eps {spec.eps:g}, {epochs} epochs" if name in todo
                else "kept: weights exist (teachers.retrain=true trains it again)")
        lines.append(f"  {name}: {what} -> {path}")
    if todo:
        at_once = cfg.max_concurrent or len(todo)
        lines.append(f"  {len(todo)} trial(s), {at_once} at once, each {resources['cpu']:g} CPU and "
                     f"{resources['gpu']:g} GPU; Ray results in {cfg.storage}")
        lines.append("  registered in MLflow at " + (cfg.tracking.uri if cfg.tracking.enabled
                                                      else "(nowhere: tracking.enabled=false)"))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Train the named (or every trainable) teacher of the profile's dataset; --help, --cfg job and dry_run=true
    answer without training."""
    line = read_command_line(argv)
    if answer_help_or_cfg(line, "search.teachers"):
        return 0
    cfg = load_config(line.overrides)
    driver.quiet_libraries(cfg.verbose)
    dataset = cfg.train.dataset
    names = list(cfg.teachers.names) or [n for n in TEACHERS.names()
                                                if get_teacher(n).dataset == dataset and get_teacher(n).source == "trained"]
    for n in names:
        TEACHERS.get(n)  # unknown names fail here, listing the known ones
    driver.check_local_resources(cfg)
    check_creatable(Path(cfg.storage), f"storage={cfg.storage}")
    todo = [n for n in names if cfg.teachers.retrain or not default_checkpoint_path(n, cfg.train.teachers_dir).exists()]
    if todo:
        # Found now, not after Ray started or hours of training: a teacher of another dataset, an unwritable
        # weights folder, a tracking store that cannot take the registration.
        for n in todo:
            teacher_train_config(n, cfg)
        check_teachers_dir(cfg)
        check_tracking_store(cfg)
    if cfg.dry_run:
        print(describe_teachers(names, todo, cfg), end="")
        return 0
    if not todo:
        print(f"every teacher already has weights in {cfg.train.teachers_dir}: {', '.join(names)} (teachers.retrain=true to train again)")
        return 0
    saved = train_teachers(todo, cfg)
    for name, path in saved.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    driver.install()
    sys.exit(run_cli(main))
