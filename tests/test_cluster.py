"""The same command on a Ray cluster: start a local head, `ray job submit` a smoke search, wait, stop the head."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Ports away from Ray's defaults so a researcher's own local cluster is left alone.
GCS_PORT, DASHBOARD_PORT = 6391, 8277


def ray_env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
            "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def plain(text: str) -> str:
    """CLI output without colour codes, lower-cased ('Job 'x' succeeded' is coloured)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text).lower()


def ray(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=ray_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def head_node():
    """A head node with the dashboard and job server, stopped afterwards whatever happens."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("ray CLI not installed in this environment")
    started = ray("start", "--head", f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}",
                  "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"http://127.0.0.1:{DASHBOARD_PORT}"
    finally:
        ray("stop", "--force")


def test_job_submission_round_trip(head_node, tmp_path):
    name = "cluster-smoke"
    job_id = f"rslad-test-{int(time.time())}"
    submit = ray(
        "job", "submit", "--address", head_node, "--working-dir", str(REPO), "--submission-id", job_id,
        "--no-wait", "--",
        "python", "-m", "search.run", "space=alpha", "profile=smoke", "ray.address=auto", f"name={name}",
        f"storage={tmp_path / 'shared' / 'ray_results'}", f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
        f"train.teachers_dir={tmp_path / 'teachers'}", "num_samples=2", "train.epochs=2", "teachers.epochs=2")
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline = time.monotonic() + 420
    status = ""
    while time.monotonic() < deadline:
        done = ray("job", "status", "--address", head_node, job_id)
        status = plain(done.stdout + done.stderr)
        if any(f" {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    got = ray("job", "logs", "--address", head_node, job_id)
    logs = got.stdout + got.stderr
    assert " succeeded" in status, status + logs[-4000:]
    assert "top trials by val_pgd_acc" in logs
    # results went where the command said (absolute paths), not into the job's temporary working dir
    assert (tmp_path / "shared" / "ray_results" / name).is_dir()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    runs = c.search_runs([c.get_experiment_by_name(name).experiment_id])
    assert sorted(r.data.tags["rslad.role"] for r in runs) == ["search", "trial", "trial"]
