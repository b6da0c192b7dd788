"""Every check the driver can make before Ray starts, without writing anything.

`preflight(plan)` takes seconds and raises the first problem as a one-line error (exit code 2):
the resources one trial needs, where results and MLflow records go, whether the name
is free (or, with resume=true, whether the saved search is there, trusted and started with the
same settings), the datasets and the teachers (loaded on the CPU, not just found). A dry run
calls it and prints the plan; nothing here starts Ray or creates a file, folder or database.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from search import record
from search.errors import SearchInputError
from search.plan import SearchPlan
from search.ray_runtime import check_local_resources
from search.storage import check_creatable, check_tracking_store, check_trusted, check_writable_file
from trainables.paths import is_uri, sqlite_file


def preflight(plan: SearchPlan) -> dict[str, str]:
    """Check the plan against the machine, the storage, the tracking store, the study, the data and the teachers.

    The name was checked by plan_search, before it became a path.

    Returns where each teacher's weights come from (check_teachers), for the dry run's plan.
    """
    check_local_resources(plan.cfg)
    check_paths(plan)
    saved = check_saved_search(plan)
    check_tracking_name(plan, saved)
    check_study(plan)
    check_datasets(plan)
    return check_teachers(plan)


# --- where things are written -------------------------------------------------------------
def check_paths(plan: SearchPlan) -> None:
    """storage and the MLflow store can be written (probed; os.access says yes to root)."""
    cfg = plan.cfg
    if not is_uri(plan.experiment_path):
        check_creatable(Path(plan.experiment_path), f"storage={cfg['storage']}")
    check_tracking_store(cfg)


def check_study(plan: SearchPlan) -> None:
    """The Optuna study's database can be written, and a new search's study name is free there (nothing created)."""
    from search.optuna_study import check_new_study

    url = plan.study_url
    db = sqlite_file(url) if url else None
    if db is not None:
        what = f"Optuna study database {url}" + ("" if plan.cfg["optuna"]["storage"] else
                                                 " (set optuna.storage= to put it elsewhere)")
        check_creatable(db.parent, what)
        if db.exists():
            check_writable_file(db, what)
    if not plan.cfg["resume"]:
        try:
            check_new_study(url, plan.name)
        except SearchInputError:
            raise
        except Exception as err:  # noqa: BLE001  (SQLAlchemy and the database drivers raise their own kinds)
            first = " ".join(str(err).split()).split(" [SQL:")[0][:300]
            raise SearchInputError(f"optuna.storage: the study database {url} cannot be read "
                                   f"({type(err).__name__}: {first})") from None


# --- the name: free for a new search, the same search on resume ------------------------------
def check_saved_search(plan: SearchPlan) -> dict | None:
    """New search: nothing saved under its name. resume=true: a saved, trusted search with the same settings.

    Returns the saved description (None for a new search or one started by an older version).
    """
    from ray import tune  # an import only: nothing of Ray starts

    path = plan.experiment_path
    exists = tune.Tuner.can_restore(path)
    saved = plan.saved
    if not plan.cfg["resume"]:
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
    if saved is None or record.STUDY not in saved:
        # Its pickled searcher is search.searcher.OptunaSearcher (study in memory), which this version removed.
        raise SearchInputError(
            f"resume=true: search {plan.name!r} at {path} was started by an earlier version of rslad-search "
            f"(Optuna study in memory) that this version cannot resume; finish it with that version (its MLflow "
            f"parent run's tag git.revision) or start a new search with another name=")
    changed = record.differences(record.with_new_fields(saved["settings"]), record.settings(plan))
    if changed:
        raise SearchInputError(
            f"resume=true: search {plan.name!r} was started with other settings: {', '.join(changed)}; "
            f"a resumed search keeps its own, so rerun with those values (or start a new search with another name=)")
    return saved


def check_tracking_name(plan: SearchPlan, saved: dict | None) -> None:
    """The MLflow experiment of this name is free (new search) or belongs to this very search (resume)."""
    cfg = plan.cfg
    if not cfg["tracking"]["enabled"]:
        return
    uri = cfg["tracking"]["uri"]
    db = sqlite_file(uri)
    if db is not None and not db.exists():
        return  # nothing recorded yet; opening it with MLflow would create it
    exp = _experiment(uri, plan.name)
    if exp is None:
        return
    from search.tracking import SEARCH_ID, STORAGE

    if exp.lifecycle_stage == "deleted":
        raise SearchInputError(f"name={plan.name!r} belongs to a deleted MLflow experiment in {uri}; "
                               f"restore or purge it (mlflow gc), or pick another name=")
    owner = exp.tags.get(SEARCH_ID)
    where = exp.tags.get(STORAGE) or _parent_storage(uri, exp)
    if cfg["resume"]:
        if owner is not None and saved is not None and owner == saved["search_id"]:
            return
        if owner is None and where in (None, plan.experiment_path):
            return  # recorded by an older version, which tagged no search id
    raise SearchInputError(f"name={plan.name!r} is already used in the tracking store {uri} by "
                           f"{'another ' if cfg['resume'] else 'the '}search stored at {where or 'an unknown place'}; "
                           f"pick another name=")


def _experiment(uri: str, name: str) -> Any:
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri).get_experiment_by_name(name)
    except Exception as err:  # noqa: BLE001  (MLflow, SQLAlchemy and sqlite3 each raise their own kind)
        first = " ".join(str(err).split()).split(" [SQL:")[0][:300]
        raise SearchInputError(f"tracking.uri={uri} cannot be read as an MLflow store "
                               f"({type(err).__name__}: {first})") from None


def _parent_storage(uri: str, exp: Any) -> str | None:
    """rslad.storage of the experiment's parent run (searches recorded before experiments carried the tag)."""
    from mlflow.tracking import MlflowClient

    from search.tracking import ROLE, STORAGE

    runs = MlflowClient(uri).search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'search'",
                                         max_results=1)
    return runs[0].data.tags.get(STORAGE) if runs else None


# --- data and teachers ----------------------------------------------------------------------
def check_datasets(plan: SearchPlan) -> None:
    """Every dataset in play is in its data_dir (torchvision's files and checksums), unless download=true."""
    from trainables.data import check_cifar_files

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

    Returns teacher name -> where its weights come from: "file" (they load), "registry", "robustbench" or
    "train" (search.teachers.ensure_teachers tries them in this order).
    """
    from search.teachers import checkpoint_for, how_to_provide, load_teacher

    sources = {}
    for name in plan.teachers:
        path = checkpoint_for(name, plan.base_train)
        if path.exists():
            load_teacher(name, path)
            sources[name] = "file"
            continue
        sources[name] = provider(plan, name)
        if sources[name] is None:
            raise SearchInputError(how_to_provide(name, path))
        if sources[name] == "train":
            check_creatable(path.parent, f"train.teachers_dir={plan.base_train['teachers_dir']}")
    return sources


def provider(plan: SearchPlan, name: str) -> str | None:
    """Where a missing teacher's weights will come from: the MLflow registry, RobustBench (installed), training
    (teachers.auto_train), in the order the driver tries them; None when from nowhere."""
    from search.teachers import registered_versions
    from trainables.teachers import get_teacher

    cfg = plan.cfg
    if cfg["tracking"]["enabled"] and registered_versions(cfg["tracking"]["uri"], name):
        return "registry"
    if get_teacher(name).robustbench_id and importlib.util.find_spec("robustbench") is not None:
        return "robustbench"
    return "train" if cfg["teachers"]["auto_train"] else None
