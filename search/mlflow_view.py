"""What makes MLflow 3's UI open a search on its trials: experiment tags and the URL of the runs table.

Found in MLflow 3.17's UI (and checked with headless Chromium, tests/test_screenshots.py):
- The UI shows an experiment in "GenAI" mode (an Overview of traces, a "Detect Issues" popup)
  unless the URL says `workflowType=machine_learning` or the browser remembered "Model training";
  the experiment tag `mlflow.experimentKind=custom_model_development` is recorded (the kind
  selector shows it) but does not change where the page lands.
- `#/experiments/<id>/runs?viewStateShareKey=<key>` opens the runs table with the view stored in
  the experiment tag `mlflow.sharedViewState.<key>` (plain JSON is accepted): which columns show,
  the sort order (MLflow 3.17 takes `runsExpanded` from a shared view's JSON but drops it).
- The table nests child runs under their parent (collapsed) only when it is sorted by start time
  and not filtered; sorted by a metric it lists every run flat. The view sorts by the best metric:
  all trials show at once, ranked, with the parent run (which logs the winner's numbers under the
  same names) beside the winner.
- Run Name, Created and Duration always show; the view adds few columns after them so the
  searched params and the status fit a laptop screen.
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
RUN_NAME_COLUMN = "attributes.`Run Name`"
RUN_NAME_WIDTH = 320  # px: 'alpha_ratio=1.252 · 600b0a1c · stopped 2/4' whole (the UI's default, 190, cuts it)


def column(kind: str, name: str) -> str:
    """The UI's column key: params.`alpha`, metrics.`val_pgd_acc`, tags.`rslad.status`."""
    return f"{kind}.`{name}`"


def runs_view(searched: Iterable[str], metric: str, metrics: Iterable[str] = ("best_val_clean_acc",),
              tags: Iterable[str] = ("rslad.status",)) -> dict:
    """The runs-table view of a search: searched params, the best metric, clean accuracy, the trial status;
    every run listed, best first."""
    best = f"best_{metric}"
    columns = ([column("params", f"search.{p}") for p in searched] + [column("metrics", best)]
               + [column("metrics", m) for m in metrics if m != best] + [column("tags", t) for t in tags])
    return {"selectedColumns": columns, "orderByKey": column("metrics", best), "orderByAsc": False,
            "columnOrder": [RUN_NAME_COLUMN], "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH}}


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
