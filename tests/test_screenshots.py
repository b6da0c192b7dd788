"""Screenshots of MLflow's UI (and optuna-dashboard, when installed) on a real smoke search, in headless Chromium.

Set RSLAD_SCREENSHOTS=<folder> (e.g. docs/img) to keep the PNGs; otherwise they go to pytest's
temporary folder. The browser tests skip when no Chromium is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from browser import INSTALL, distinct_colours, find_chromium, free_port, pixels, screenshot, serve
from search.mlflow_view import KIND_TAG, experiment_tags, runs_url, runs_view

REPO = Path(__file__).resolve().parents[1]
NAME = "alpha-shots"
SIZE = (2000, 800)  # wide enough for the params and status columns beside the metrics


# --- the view the UI opens on (no browser needed) -------------------------------------------------------
def test_runs_view_shows_searched_params_best_metric_and_status_best_first():
    view = runs_view(["alpha_ratio", "teacher"], "val_pgd_acc", parent_run_id="abc")
    assert view["selectedColumns"][:3] == ["params.`search.alpha_ratio`", "params.`search.teacher`",
                                           "metrics.`best_val_pgd_acc`"]
    assert "tags.`rslad.status`" in view["selectedColumns"]
    assert view["orderByKey"] == "metrics.`best_val_pgd_acc`" and view["orderByAsc"] is False
    assert view["runsExpanded"] == {"abc": True}
    tags = experiment_tags(view)
    assert tags[KIND_TAG] == "custom_model_development" and json.loads(tags["mlflow.sharedViewState.rslad"]) == view
    with pytest.raises(ValueError, match="does not fit an MLflow tag"):
        experiment_tags(runs_view([f"p{i:04d}" for i in range(400)], "val_pgd_acc"))


def test_runs_url_opens_the_runs_table_in_model_training_mode():
    assert runs_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=rslad")
    assert runs_url("http://h:5000", "7", key=None).endswith("/#/experiments/7/runs?workflowType=machine_learning")


# --- real pages ---------------------------------------------------------------------------------------------
needs_browser = pytest.mark.skipif(find_chromium() is None,
                                   reason=f"no Chromium for screenshots; install one with `{INSTALL}`")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("RSLAD_SCREENSHOTS")
    return Path(folder).resolve() if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> dict:
    """`python -m search.run space=alpha profile=smoke` on 2 trials of 2 epochs (teacher trained first)."""
    folder = tmp_path_factory.mktemp("shots-search")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(folder), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "search.run", "space=alpha", "profile=smoke", f"name={NAME}",
                           "num_samples=2", "train.epochs=2", "teachers.epochs=2"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder}/mlruns.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rslad.role") == "search")
    # What the tracker should write (see search/mlflow_view.py); set here until it does.
    for key, value in experiment_tags(runs_view(["alpha_ratio"], "val_pgd_acc", parent.info.run_id)).items():
        client.set_experiment_tag(exp.experiment_id, key, value)
    return {"folder": folder, "uri": uri, "experiment_id": exp.experiment_id, "env": env}


def assert_real_page(png: Path) -> np.ndarray:
    image = pixels(png)
    assert image.shape[:2] == (SIZE[1], SIZE[0])
    assert distinct_colours(image) > 100, f"{png} looks blank"
    return image


@pytest.mark.slow
@needs_browser
def test_mlflow_ui_screenshots_of_the_landing_page_and_the_runs_table(search, shots, tmp_path):
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "ui", "--backend-store-uri", search["uri"], "--host", "127.0.0.1", "--port", str(port)]
    with serve(command, f"{ui}/health", tmp_path / "mlflow-ui.log", timeout_s=180, env=search["env"]):
        landing = screenshot(f"{ui}/#/experiments/{search['experiment_id']}", shots / "mlflow-landing.png", size=SIZE)
        runs = screenshot(runs_url(ui, search["experiment_id"]), shots / "mlflow-runs.png", size=SIZE)
    first, second = assert_real_page(landing), assert_real_page(runs)
    assert np.abs(first - second).mean() > 0.01  # the runs table is not the landing page


@pytest.mark.slow
@needs_browser
def test_optuna_dashboard_screenshot_of_the_study(search, shots, tmp_path):
    dashboard = os.environ.get("OPTUNA_DASHBOARD") or shutil.which("optuna-dashboard")
    if not dashboard:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard; not a project dependency)")
    db = search["folder"] / "optuna.db"
    if not db.is_file():
        pytest.skip("the search wrote no optuna.db: the driver does not use search.optuna_study.StudySearch yet")
    import optuna

    study_id = optuna.load_study(study_name=NAME, storage=f"sqlite:///{db}")._study_id
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve([dashboard, f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)], f"{url}/dashboard",
               tmp_path / "optuna-dashboard.log", timeout_s=60):
        png = screenshot(f"{url}/dashboard/studies/{study_id}", shots / "optuna-dashboard.png", size=SIZE)
    assert_real_page(png)
