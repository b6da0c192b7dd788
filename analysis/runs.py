"""Read one search back from MLflow: the parent run, one typed row per trial, and per-epoch histories."""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
import typing
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.uncertainty import Configuration, label_of, validation_images
from trainables.config import TrainConfig
from trainables.errors import UserError
from trainables.schema import (
    CHECKPOINT_DIR,
    EPOCH_METRICS,
    EPOCHS_RUN,
    ERROR,
    ORPHANED,
    REPLICATE_OF,
    REPLICATE_SEED,
    ROLE,
    STATUS,
    TRIAL_ID,
)

log = logging.getLogger(__name__)


class ExperimentNotFoundError(UserError, LookupError):
    """No MLflow experiment of that name; the message lists the experiments that exist."""


CHECKPOINTS = ("best", "last")
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
"""Suffixes of a result's 95 % interval: test/<column>/<checkpoint>_ci_low (Wilson, from its number of images)."""
PER_IMAGE = "per_image"
"""Artifact folder of a finalized run: per_image/<checkpoint>/<column>.npz, which test images the model got right."""


def result_key(column: str, checkpoint: str) -> str:
    """MLflow metric key of a test-set result: test/<column>/<best|last>."""
    return f"test/{column}/{checkpoint}"


def per_image(client: Any, run_id: str, checkpoint: str, column: str) -> np.ndarray | None:
    """Which test images a finalized run's model got right under `column` (bool array in image order), None when
    finalize did not store it (runs finalized before it did, AutoAttack)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(run_id, f"{PER_IMAGE}/{checkpoint}/{column}.npz", folder)
            with np.load(path) as blob:
                return np.unpackbits(blob["correct"], count=int(blob["n"])).astype(bool)
    except Exception:  # noqa: BLE001  (a missing artifact raises MLflow's, OSError or FileNotFoundError by store)
        return None


def client_for(tracking_uri: str):
    """An MlflowClient on `tracking_uri` (imported lazily: mlflow is slow to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def get_experiment(client: Any, name: str) -> Any:
    """The MLflow experiment `name`, or ExperimentNotFoundError listing those that exist."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        listed = ", ".join(names) if names else "(none)"
        raise ExperimentNotFoundError(f"no experiment {name!r} in {client.tracking_uri}; existing experiments: {listed}")
    return exp


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every active run of the experiment (paged; search_runs returns at most 1000 per page)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent_run(name: str, tracking_uri: str) -> Any | None:
    """The search's parent run (tag rslad.role=search), newest if several; None when absent."""
    client = client_for(tracking_uri)
    exp = get_experiment(client, name)
    parents = [r for r in _all_runs(client, exp.experiment_id) if r.data.tags.get(ROLE) == "search"]
    if len(parents) > 1:
        log.warning("experiment %r has %d parent runs; using the newest", name, len(parents))
    return max(parents, key=lambda r: r.info.start_time or 0) if parents else None


# --- typed params ----------------------------------------------------------------------------
def _train_config_types() -> dict[str, Any]:
    """TrainConfig field -> type hint, so params are parsed by their declared type, not guessed."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _parse_bool(text: str) -> bool | None:
    return {"true": True, "false": False}.get(text.strip().lower())


def parse_typed(text: str | None, hint: Any) -> Any:
    """An MLflow param string converted to `hint` (int, float, bool, str, tuple); the text itself if it does not parse."""
    if text is None:
        return None
    try:
        if hint is bool:
            value = _parse_bool(text)
            return text if value is None else value
        if hint is int:
            return int(float(text)) if float(text).is_integer() else text
        if hint is float:
            return float(text)
        if typing.get_origin(hint) is tuple:
            return tuple(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
        return text
    return text


def infer_column(values: list[str | None]) -> list[Any]:
    """Parse a column of unknown params (search.*): ints if all are ints, floats if all are numbers, else text."""
    present = [v for v in values if v is not None]

    def all_parse(fn) -> bool:
        try:
            for v in present:
                fn(v)
            return True
        except ValueError:
            return False

    if present and all(_parse_bool(v) is not None for v in present):
        return [None if v is None else _parse_bool(v) for v in values]
    if present and all_parse(int):
        return [None if v is None else int(v) for v in values]
    if present and all_parse(float):
        return [None if v is None else float(v) for v in values]
    return values


def _k_of(alpha: Any) -> float:
    """The supplement's ratio k = alpha/(1-alpha) (inf at alpha=1, NaN when alpha is missing)."""
    if alpha is None or (isinstance(alpha, float) and math.isnan(alpha)):
        return math.nan
    return math.inf if alpha >= 1 else alpha / (1 - alpha)


# --- the frames ------------------------------------------------------------------------------
def _trial_runs(client: Any, name: str) -> tuple[Any, list[Any], Any | None]:
    exp = get_experiment(client, name)
    runs = _all_runs(client, exp.experiment_id)
    parents = [r for r in runs if r.data.tags.get(ROLE) == "search"]
    parent = max(parents, key=lambda r: r.info.start_time or 0) if parents else None
    # A run closed as an orphan (its trial never saved by Tune, replaced on resume) is no trial of the search.
    trials = [r for r in runs if r.data.tags.get(ROLE) == "trial" and r.data.tags.get(STATUS) != ORPHANED]
    if parent is not None:
        # Only this search's trials; an orphan from another parent (an old, deleted search) is ignored.
        trials = [r for r in trials if r.data.tags.get("mlflow.parentRunId", parent.info.run_id) == parent.info.run_id]
    by_trial: dict[str, Any] = {}
    for r in sorted(trials, key=lambda r: r.info.start_time or 0):
        tid = r.data.tags.get(TRIAL_ID, r.info.run_id)
        if tid in by_trial:
            # The search reattaches runs by trial id, so a duplicate means someone else wrote one: keep the newest.
            log.warning("trial %s has several runs (%s, %s); using the newer", tid, by_trial[tid].info.run_id, r.info.run_id)
        by_trial[tid] = r
    return exp, list(by_trial.values()), parent


def load_runs(name: str, tracking_uri: str) -> pd.DataFrame:
    """One row per trial run of search `name`: ids, status, typed params, final metrics, test/* metrics, checkpoint_dir.

    Params are columns under their logged names (TrainConfig fields typed by the dataclass, search.*
    inferred); metrics are their last value, under `metric.<name>` where a param has the same name
    (the per-epoch `lr`); test.* tags are columns too; `k` = alpha/(1-alpha) when alpha is a param.
    """
    client = client_for(tracking_uri)
    _, runs, _ = _trial_runs(client, name)
    hints = _train_config_types()
    rows: list[dict[str, Any]] = []
    param_names: set[str] = set()
    for r in runs:
        tags, params = r.data.tags, r.data.params
        param_names.update(params)
        epochs_run = tags.get(EPOCHS_RUN)
        rows.append({
            "run_id": r.info.run_id,
            "trial_id": tags.get(TRIAL_ID, r.info.run_id),
            "run_name": r.info.run_name,
            "status": tags.get(STATUS, "unknown"),
            "mlflow_status": r.info.status,
            "error": tags.get(ERROR),
            "checkpoint_dir": tags.get(CHECKPOINT_DIR),
            "epochs_run": int(float(epochs_run)) if epochs_run not in (None, "") else None,
            "replicate_of": tags.get(REPLICATE_OF),
            "replicate_seed": int(tags[REPLICATE_SEED]) if tags.get(REPLICATE_SEED) else None,
            "start_time": r.info.start_time,
            **{f"tag:{k}": v for k, v in tags.items() if k.startswith("test.")},
            **{f"param:{k}": v for k, v in params.items()},
            # `lr` is both a TrainConfig param (initial lr) and a per-epoch metric: the param keeps the name.
            **{(f"metric.{k}" if k in params else k): float(v) for k, v in r.data.metrics.items()},
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "trial_id", "status", "checkpoint_dir", "epochs_run", "replicate_of",
                                     "replicate_seed"])
    # Params become typed columns named as logged: TrainConfig fields by their declared type, the rest inferred.
    for pname in sorted(param_names):
        raw = [None if pd.isna(v) else v for v in frame.pop(f"param:{pname}")]
        if pname in hints:
            frame[pname] = [parse_typed(v, hints[pname]) for v in raw]
        else:
            frame[pname] = infer_column(raw)
    for col in [c for c in frame.columns if c.startswith("tag:")]:
        frame[col[len("tag:"):]] = frame.pop(col)
    for metric in EPOCH_METRICS:
        if metric not in frame.columns:
            frame[metric] = math.nan
    if "epochs_run" in frame.columns:
        # Older runs without the tag: the last logged best_epoch step is not the epoch count, so leave it missing.
        frame["epochs_run"] = frame["epochs_run"].astype("Int64")
    frame["replicate_seed"] = frame["replicate_seed"].astype("Int64")
    if "alpha" in frame.columns:
        frame["k"] = [_k_of(a) for a in frame["alpha"]]
    return frame.reset_index(drop=True)


def load_history(name: str, tracking_uri: str, run_ids: Iterable[str] | None = None,
                 metrics: Iterable[str] = EPOCH_METRICS) -> pd.DataFrame:
    """Per-epoch metric histories of the search's trials as a long frame: run_id, trial_id, step, metric, value."""
    client = client_for(tracking_uri)
    _, runs, _ = _trial_runs(client, name)
    wanted = None if run_ids is None else set(run_ids)
    rows = []
    for r in runs:
        if wanted is not None and r.info.run_id not in wanted:
            continue
        tid = r.data.tags.get(TRIAL_ID, r.info.run_id)
        for metric in metrics:
            if metric not in r.data.metrics:
                continue
            for m in client.get_metric_history(r.info.run_id, metric):
                rows.append({"run_id": r.info.run_id, "trial_id": tid, "step": int(m.step),
                             "metric": metric, "value": float(m.value), "timestamp": m.timestamp})
    frame = pd.DataFrame(rows, columns=["run_id", "trial_id", "step", "metric", "value", "timestamp"])
    if frame.empty:
        return frame
    # A retried epoch (trial restored from a checkpoint) logs the same step twice: the later write wins.
    frame = frame.sort_values("timestamp").drop_duplicates(["run_id", "metric", "step"], keep="last")
    return frame.sort_values(["run_id", "metric", "step"]).reset_index(drop=True)


# --- selection -------------------------------------------------------------------------------
DEFAULT_SELECT = "best_val_pgd_acc"


def selection_mode(select: str, parent_tags: dict[str, str] | None = None) -> str:
    """'max' or 'min' for the selection metric: the search's rslad.mode when it is the search's metric, min for losses."""
    tags = parent_tags or {}
    metric = tags.get("rslad.metric", "val_pgd_acc")
    if select in (metric, f"best_{metric}") and tags.get("rslad.mode") in ("max", "min"):
        return tags["rslad.mode"]
    return "min" if "loss" in select else "max"


def is_replicate(runs: pd.DataFrame) -> pd.Series:
    """Rows that are replicates (python -m search.replicate) rather than the search's own trials."""
    if "replicate_of" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs["replicate_of"].notna()


def replicates_of(runs: pd.DataFrame, finalists: Iterable[str], include_failed: bool = False) -> pd.DataFrame:
    """The replicates of these trials, finalist by finalist (in the given order), then by seed."""
    order = {tid: i for i, tid in enumerate(finalists)}
    if "replicate_of" not in runs.columns:
        return runs.iloc[0:0]
    reps = runs[is_replicate(runs)]
    reps = reps[reps["replicate_of"].isin(order)]
    if not include_failed:
        reps = reps[reps["status"] != "failed"]
    seeds = reps["replicate_seed"] if "replicate_seed" in reps.columns else pd.Series(0, index=reps.index)
    keys = reps["replicate_of"].map(order) * 1_000_000 + seeds.fillna(0).astype(int)
    return reps.loc[keys.sort_values(kind="mergesort").index]


def searched_params(row: pd.Series) -> dict[str, Any]:
    """A run's searched values (its search.* params; a replicate's label left out)."""
    return {c[len("search."):]: (v.item() if hasattr(v, "item") else v) for c, v in row.items()
            if c.startswith("search.") and c != "search.replicate" and v is not None and not pd.isna(v)}


IMAGES_TAG = {"autoattack": "test.aa_n", "aa_custom": "test.aa_custom.n"}
"""Where a test column's image count is kept (test.n for the per-batch columns)."""


def test_images(row: pd.Series, column: str) -> int | None:
    """The images a test column of this run was measured on (test.n; AutoAttack: its aa.n), None when unknown."""
    value = row.get(IMAGES_TAG.get(column, "test.n"))
    return int(value) if isinstance(value, str) and value.isdigit() else None


def replicate_configurations(runs: pd.DataFrame, finalists: Sequence[str], key: str) -> list[Configuration]:
    """Each finalist (rank = its place in `finalists`) with its own value of `key` and its finished replicates' values
    by train.seed; the images behind the finalist's value are val_size for validation metrics, test.n for test ones."""
    by_id = runs.set_index("trial_id", drop=False)
    column = key.split("/")[1] if key.startswith("test/") else None
    out = []
    for rank, tid in enumerate(finalists, 1):
        row = by_id.loc[tid]
        value = row.get(key)
        n = test_images(row, column) if column else validation_images(row)
        config = Configuration(tid, label_of(searched_params(row), tid), rank,
                               float(value) if value is not None and pd.notna(value) else None, n)
        for _, rep in replicates_of(runs, [tid]).iterrows():
            if rep["status"] == "finished" and key in rep and pd.notna(rep[key]) and pd.notna(rep["replicate_seed"]):
                config.values[int(rep["replicate_seed"])] = float(rep[key])
        out.append(config)
    return out


def rank_trials(runs: pd.DataFrame, select: str = DEFAULT_SELECT, mode: str = "max",
                include_failed: bool = False) -> pd.DataFrame:
    """The search's trials ordered best-first by `select` (ties by trial id); failed trials, trials without the metric
    and replicates (they are not candidates: they measure a finalist's seed-to-seed spread) are left out."""
    if select not in runs.columns:
        numeric = sorted(c for c in runs.columns if pd.api.types.is_numeric_dtype(runs[c]))
        raise UserError(f"select={select!r} is not a metric of these runs; available: {', '.join(numeric)}")
    ranked = runs[runs[select].notna() & ~is_replicate(runs)]
    if not include_failed:
        ranked = ranked[ranked["status"] != "failed"]
    ranked = ranked.sort_values([select, "trial_id"], ascending=[mode == "min", True], kind="mergesort")
    return ranked.reset_index(drop=True)
