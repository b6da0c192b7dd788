"""What makes MLflow 3's UI open a search on its trials: experiment tags and the URL of the runs table.

Found in MLflow 3.17's UI (and checked with headless Chromium, tests/test_screenshots.py):
- The UI shows an experiment in "GenAI" mode (an Overview of traces, a "Detect Issues" popup)
  unless the URL says `workflowType=machine_learning` or the browser remembered "Model training";
  the experiment tag `mlflow.experimentKind=custom_model_development` is recorded (the kind
  selector shows it) but does not change where the page lands.
- `#/experiments/<id>/runs?viewStateShareKey=<key>` opens the runs table with the view stored in
  the experiment tag `mlflow.sharedViewState.<key>` (plain JSON is accepted): which columns show,
  which parent runs are expanded, the sort order.
"""

from __future__ import annotations

import json
from typing import Iterable
from urllib.parse import urlencode

KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
VIEW_KEY = "rslad"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# MLflow stores tag values up to 8000 characters (5000 in older stores): a view must stay below.
MAX_TAG_CHARS = 5000


def column(kind: str, name: str) -> str:
    """The UI's column key: params.`alpha`, metrics.`val_pgd_acc`, tags.`rslad.status`."""
    return f"{kind}.`{name}`"


def runs_view(searched: Iterable[str], metric: str, parent_run_id: str | None = None,
              metrics: Iterable[str] = ("best_val_clean_acc", "best_epoch"),
              tags: Iterable[str] = ("rslad.status", "rslad.epochs_run")) -> dict:
    """The runs-table view of a search: searched params, the best metric and a few numbers, the trial status;
    trials listed under an expanded parent, best first."""
    best = f"best_{metric}"
    columns = ([column("params", f"search.{p}") for p in searched] + [column("metrics", best)]
               + [column("metrics", m) for m in metrics] + [column("tags", t) for t in tags])
    view = {"selectedColumns": columns, "orderByKey": column("metrics", best), "orderByAsc": False}
    if parent_run_id:
        view["runsExpanded"] = {parent_run_id: True}
    return view


def experiment_tags(view: dict, key: str = VIEW_KEY) -> dict[str, str]:
    """Experiment tags that mark a search as model development and store its runs view under `key`."""
    text = json.dumps(view, separators=(",", ":"))
    if len(text) > MAX_TAG_CHARS:
        raise ValueError(f"runs view of {len(text)} characters does not fit an MLflow tag ({MAX_TAG_CHARS})")
    return {KIND_TAG: MODEL_DEVELOPMENT, f"{VIEW_TAG_PREFIX}{key}": text}


def runs_url(ui: str, experiment_id: str, key: str | None = VIEW_KEY) -> str:
    """URL of the experiment's runs table in model-training mode (with the stored view when `key` is given)."""
    query = {"workflowType": "machine_learning", **({"viewStateShareKey": key} if key else {})}
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"
