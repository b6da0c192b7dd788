"""MLflow tracking from the driver: one parent run per search, one child run per Ray trial.

Ray's stock MLflowLoggerCallback opens a new run for every trial it sees after a restore
(duplicates, orphans left RUNNING) and cannot tell an ASHA stop from a finished trial. This
callback finds its runs again by tag (`rslad.search`, `ray.trial_id`) so a resumed search
reattaches to them, and records each trial's real status. All writes happen in the driver
process: SQLite takes one writer at a time.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

log = logging.getLogger(__name__)

# What the trainable reports that belongs in MLflow (Ray adds timestamps, pids, config/*...).
METRIC_KEYS = ("train_loss", "lr", "val_clean_acc", "val_pgd_acc", "best_val_pgd_acc", "best_val_clean_acc", "best_epoch",
               "schedule_pct", "epoch_time_s", "images_per_s")
ROLE, SEARCH, TRIAL_ID, STATUS = "rslad.role", "rslad.search", "ray.trial_id", "rslad.status"


def git_state(repo: Path) -> dict[str, str]:
    """git revision and dirty flag of `repo` ('unknown' outside a checkout, e.g. in a Ray job's working dir)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return {"git.revision": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.SubprocessError):
        return {"git.revision": "unknown", "git.dirty": "unknown"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "ray", "optuna", "mlflow", "pyautoattack", "hydra-core"):
        try:
            out[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"version.{pkg}"] = "missing"
    return out


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """MLflow params of a trial: every TrainConfig field by name, searched params as search.<name>."""
    params = {k: str(v) for k, v in config["train"].items()}
    params.update({f"search.{k}": str(v) for k, v in config.items() if k not in ("train", "trial")})
    return params


def trial_status(trial: Any) -> str:
    """finished when the trial ran its whole schedule, stopped_early when the scheduler cut it."""
    done = int((trial.last_result or {}).get("epoch", 0))
    return "finished" if done >= int(trial.config["train"]["epochs"]) else "stopped_early"


class MLflowTracker(tune.Callback):
    """A Tune callback that records the search in MLflow, idempotently across restores."""

    def __init__(self, tracking_uri: str, experiment: str, parent_tags: dict[str, str],
                 parent_params: dict[str, str], artifacts: dict[str, str]) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_tags = parent_tags
        self.parent_params = parent_params
        self.artifacts = artifacts  # artifact file name -> text (resolved config, space YAML)
        self._client = None
        self.parent_id: str | None = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment state; the client and caches are rebuilt.
        return {**self.__dict__, "_client": None, "_runs": {}, "parent_id": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # --- parent --------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        """Find or create the experiment and its parent run (reopened on resume)."""
        self.parent_id = ensure_parent_run(self.client, self.experiment, self.parent_tags,
                                           self.parent_params, self.artifacts)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Close the parent run with the best trial's numbers."""
        self._finish_parent(trials, "FINISHED")

    def _finish_parent(self, trials: list, status: str) -> None:
        metric = self.parent_tags.get("rslad.metric", "val_pgd_acc")
        scored = [t for t in trials if t.last_result and f"best_{metric}" in t.last_result]
        if scored:
            best = max(scored, key=lambda t: t.last_result[f"best_{metric}"])
            self.client.set_tag(self.parent_id, "rslad.best_trial", best.trial_id)
            self.client.log_metric(self.parent_id, f"best/{metric}", best.last_result[f"best_{metric}"])
            # Clean accuracy at the best trial's best epoch, not its last one.
            self.client.log_metric(self.parent_id, "best/val_clean_acc",
                                   best.last_result.get("best_val_clean_acc", float("nan")))
        counts: dict[str, int] = {}
        for t in trials:
            counts[str(t.status)] = counts.get(str(t.status), 0) + 1
        self.client.set_tag(self.parent_id, "rslad.trial_states", str(counts))
        self.client.set_terminated(self.parent_id, status)

    # --- children ------------------------------------------------------------------------
    def run_id(self, trial: Any) -> str:
        """The trial's child run: cached, else found by tag, else created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs(
            [self.client.get_experiment_by_name(self.experiment).experiment_id],
            filter_string=f"tags.`{TRIAL_ID}` = '{trial.trial_id}' and tags.`{SEARCH}` = '{self.experiment}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.client.get_run(self.parent_id).info.experiment_id, run_name=f"trial-{trial.trial_id}",
                tags={"mlflow.parentRunId": self.parent_id, ROLE: "trial", SEARCH: self.experiment,
                      TRIAL_ID: trial.trial_id, STATUS: "running"})
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in trial_params(trial.config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), STATUS, "running")

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), STATUS, "running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step) for k in METRIC_KEYS if k in result]
        run_id = self.run_id(trial)
        self.client.log_batch(run_id, metrics=metrics)
        self.client.set_tag(run_id, "rslad.epochs_run", str(step))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), "rslad.checkpoint_dir", checkpoint.path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, STATUS, trial_status(trial))
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, STATUS, "failed")
        self.client.set_tag(run_id, "rslad.error", error_summary(trial))
        self.client.set_terminated(run_id, "FAILED")


def error_summary(trial: Any) -> str:
    """The last line of the trial's error file (the exception), for a tag."""
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1][:4000] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error (no error file)"


def ensure_parent_run(client: Any, experiment: str, tags: dict[str, str], params: dict[str, str],
                      artifacts: dict[str, str]) -> str:
    """The search's parent run: reopened when it exists (resume), else created with params and artifacts."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{ROLE}` = 'search' and tags.`{SEARCH}` = '{experiment}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "rslad.resumed", "true")
        return run_id
    run = client.create_run(exp_id, run_name=experiment, tags={**tags, ROLE: "search", SEARCH: experiment})
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:
        for name, text in artifacts.items():
            (Path(folder) / name).write_text(text)
            client.log_artifact(run.info.run_id, str(Path(folder) / name), "config")
    return run.info.run_id
