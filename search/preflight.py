"""Every check the driver can make before Ray starts, without writing anything.

`preflight(plan)` takes seconds and raises the first problem as a one-line error (exit code 2):
the resources one trial needs, where results and MLflow records go, whether the name
is free (or, with resume=true, whether the saved search is there, trusted and started with the
same settings), the datasets and the teachers (loaded on the CPU, not just found). A dry run
calls it and prints the plan; nothing here starts Ray or creates a file, folder or database.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from search.config import SearchInputError
from search.driver import check_local_resources
from search.plan import SearchPlan, settings
from search.storage import (
    STUDY,
    check_creatable,
    check_object_storage,
    check_trusted,
    check_writable_file,
    record_differences,
    record_path,
)
from search.study import check_new_study
from search.teacher_weights import (
    load_teacher,
    missing_message,
    source_of,
)
from search.tracking import check_tracking_name, check_tracking_store
from trainables.data import check_cifar_files
from trainables.paths import is_uri, sqlite_file
from trainables.teachers import checkpoint_path


def preflight(plan: SearchPlan) -> dict[str, str]:
    """Check the plan against the machine, the storage, the tracking store, the study, the data and the teachers.

    The name was checked by plan_search, before it became a path.

    Returns where each teacher's weights come from (check_teachers), for the dry run's plan.
    """
    check_local_resources(plan.cfg)
    check_paths(plan)
    saved = check_saved_search(plan)
    check_tracking_name(plan.cfg, plan.name, plan.experiment_path, saved)
    check_study(plan)
    check_datasets(plan)
    return check_teachers(plan)


# --- where things are written -------------------------------------------------------------------------------
def check_paths(plan: SearchPlan) -> None:
    """storage (a folder, or object storage written and read back) and the MLflow store can be written (probed;
    os.access says yes to root)."""
    cfg = plan.cfg
    if is_uri(plan.experiment_path):
        check_object_storage(plan.experiment_path, f"storage={cfg.storage}")
    else:
        check_creatable(Path(plan.experiment_path), f"storage={cfg.storage}")
    check_tracking_store(cfg)


def check_study(plan: SearchPlan) -> None:
    """The Optuna study's database can be written, and a new search's study name is free there (nothing created)."""
    url = plan.study_url
    db = sqlite_file(url) if url else None
    if db is not None:
        what = f"Optuna study database {url}" + ("" if plan.cfg.optuna.storage else
                                                 " (set optuna.storage= to put it elsewhere)")
        check_creatable(db.parent, what)
        if db.exists():
            check_writable_file(db, what)
    if not plan.cfg.resume:
        try:
            check_new_study(url, plan.name)
        except SearchInputError:
            raise
        except Exception as err:  # noqa: BLE001  (SQLAlchemy and the database drivers raise their own kinds)
            first = " ".join(str(err).split()).split(" [SQL:")[0][:300]
            raise SearchInputError(f"optuna.storage: the study database {url} cannot be read "
                                   f"({type(err).__name__}: {first})") from None


# --- the name: free for a new search, the same search on resume ---------------------------------------------
def check_saved_search(plan: SearchPlan) -> dict | None:
    """New search: nothing saved under its name. resume=true: a saved, trusted search with the same settings.

    Returns the saved description (None for a new search).
    """
    path = plan.experiment_path
    exists = tune.Tuner.can_restore(path)
    saved = plan.saved
    if not plan.cfg.resume:
        if exists:
            raise SearchInputError(f"a search named {plan.name!r} already exists at {path}; "
                                   f"continue it with resume=true or pick another name=")
        if saved is not None:
            raise SearchInputError(f"a search named {plan.name!r} was started at {path} but stopped before Tune "
                                   f"saved anything; remove that folder or pick another name=")
        return None
    if not exists:
        raise SearchInputError(f"resume=true but there is no search to continue at {path} "
                               f"(check name= and storage=)")
    check_trusted(path)
    if saved is None or STUDY not in saved:
        raise SearchInputError(f"resume=true: search {plan.name!r} at {path} has no description "
                               f"({record_path(path)}) and cannot be resumed; start a new search with another name=")
    changed = record_differences(saved["settings"], settings(plan))
    if changed:
        raise SearchInputError(
            f"resume=true: search {plan.name!r} was started with other settings: {', '.join(changed)}; "
            f"a resumed search keeps its own, so rerun with those values (or start a new search with another name=)")
    return saved


# --- data and teachers --------------------------------------------------------------------------------------
def check_datasets(plan: SearchPlan) -> None:
    """Every dataset in play is in its data_dir (torchvision's files and checksums), unless download=true."""
    datasets = plan.space.field_values("dataset") - {"digits"}  # digits ships with scikit-learn
    download = True in plan.space.field_values("download")
    for data_dir in sorted(plan.space.field_values("data_dir")):
        for dataset in sorted(datasets):
            if download:
                check_creatable(Path(data_dir), f"train.data_dir={data_dir}")
            else:
                check_cifar_files(dataset, data_dir)


def check_teachers(plan: SearchPlan) -> dict[str, str]:
    """Every teacher in play loads strictly on the CPU, or will be fetched or trained before the search.

    Returns teacher name -> where its weights come from (teacher_weights.SOURCES: "file" when they load here).
    """
    sources = {}
    for name in plan.teachers:
        path = checkpoint_path(name, plan.base_train)
        source = source_of(name, path, plan.cfg)
        if source is None:
            raise SearchInputError(missing_message(name, path))
        if source == "file":
            load_teacher(name, path)
        elif source == "train":
            check_creatable(path.parent, f"train.teachers_dir={plan.base_train['teachers_dir']}")
        sources[name] = source
    return sources
