"""Screenshots of MLflow's UI (and optuna-dashboard, when installed) on a real smoke search, in headless Chromium.

Set RSLAD_SCREENSHOTS=<folder> (e.g. docs/img) to keep the PNGs (the README's images); otherwise they
go to pytest's temporary folder. The browser tests skip when no Chromium is installed, the dashboard
test when optuna-dashboard is not on PATH (or in $OPTUNA_DASHBOARD). The MLflow pages open on what
the search's tracker wrote itself: the experiment tags and the runs URL the command prints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from browser import INSTALL, distinct_colours, find_chromium, free_port, pixels, screenshot, serve
from commands import SMOKE_NAME
from commands import env as command_env
from search.tracking import KIND_TAG, experiment_tags, runs_url, runs_view

REPO = Path(__file__).resolve().parents[1]
NAME = SMOKE_NAME
SIZE = (1400, 900)  # pixels of each PNG
SCALE = 0.8  # laid out in a 1750 x 1125 window, drawn at 80 %: the whole runs table beside MLflow's Assistant panel


# --- the view the UI opens on (no browser needed) -------------------------------------------------------
def test_runs_view_shows_searched_params_best_metric_and_status_best_first():
    view = runs_view(["alpha_ratio", "teacher"], "val_pgd_acc")
    assert view["selectedColumns"] == ["params.`search.alpha_ratio`", "params.`search.teacher`",
                                       "metrics.`best_val_pgd_acc`", "metrics.`best_val_clean_acc`",
                                       "tags.`rslad.status`"]
    # sorted by a metric, MLflow lists every run flat (it nests trials, collapsed, only in start-time order)
    assert view["orderByKey"] == "metrics.`best_val_pgd_acc`" and view["orderByAsc"] is False
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
def search(smoke_run) -> dict:
    """The session's smoke search (tests/commands.smoke_search; its experiment tags and printed runs URL are checked
    in tests/test_search_e2e.py): where it is, and the environment to serve its pages with."""
    from mlflow.tracking import MlflowClient

    folder = smoke_run[0]
    uri = f"sqlite:///{folder}/mlruns.db"
    exp = MlflowClient(uri).get_experiment_by_name(NAME)
    return {"folder": folder, "uri": uri, "experiment_id": exp.experiment_id, "env": {**command_env(folder),
                                                                                       "PYTHONPATH": str(REPO)}}


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
        # The plain experiment link (GenAI overview) only to compare with: not one of the README's images.
        landing = screenshot(f"{ui}/#/experiments/{search['experiment_id']}", tmp_path / "mlflow-landing.png",
                             size=SIZE, scale=SCALE)
        runs = screenshot(runs_url(ui, search["experiment_id"]), shots / "mlflow-runs.png", size=SIZE, scale=SCALE)
    first, second = assert_real_page(landing), assert_real_page(runs)
    assert np.abs(first - second).mean() > 0.01  # the runs table is not the landing page


@pytest.mark.slow
@needs_browser
def test_optuna_dashboard_screenshot_of_the_study(search, shots, tmp_path):
    dashboard = os.environ.get("OPTUNA_DASHBOARD") or shutil.which("optuna-dashboard")
    if not dashboard:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    db = search["folder"] / "optuna.db"  # beside mlruns.db, where the search keeps its study
    assert db.is_file()
    import optuna

    study_id = optuna.load_study(study_name=NAME, storage=f"sqlite:///{db}")._study_id
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve([dashboard, f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)], f"{url}/dashboard",
               tmp_path / "optuna-dashboard.log", timeout_s=60):
        png = screenshot(f"{url}/dashboard/studies/{study_id}", shots / "optuna-dashboard.png", size=SIZE,
                         scale=SCALE)
    assert_real_page(png)


def test_run_names_carry_the_searched_values_and_how_the_trial_ended():
    from types import SimpleNamespace

    from search.tracking import run_name

    config = {"alpha_ratio": 5.0, "teacher": "wrn34_10_trades", "train": {"epochs": 8}, "trial": {}}
    trial = SimpleNamespace(trial_id="3f2a1b00", config=config, last_result={"epoch": 2})
    assert run_name(trial) == "alpha_ratio=5 teacher=wrn34_10_trades · 3f2a1b00"
    assert run_name(trial, "stopped_early") == "alpha_ratio=5 teacher=wrn34_10_trades · 3f2a1b00 · stopped 2/8"
    assert run_name(trial, "failed").endswith("· 3f2a1b00 · failed")
    assert run_name(trial, "running") == run_name(trial)
    config["alpha_ratio"] = 1.2520653814
    assert run_name(trial, "finished").startswith("alpha_ratio=1.252 teacher=")
    long = SimpleNamespace(trial_id="x", config={"p": "v" * 400, "train": {"epochs": 8}}, last_result={})
    assert len(run_name(long, "interrupted")) == 250 and run_name(long, "interrupted").endswith(" · interrupted")
