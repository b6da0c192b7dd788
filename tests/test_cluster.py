"""The same command on a Ray cluster: start a local head, `ray job submit` a smoke search, wait, stop the head.

The test brings its own Ray auth token (a fresh machine has no ~/.ray/auth_token) and binds the head
to 127.0.0.1, so it needs nothing from earlier runs and opens nothing to the network.
"""

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reliability.procs import started_with, stop

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Ports away from Ray's defaults so a researcher's own local cluster is left alone.
GCS_PORT, DASHBOARD_PORT = 6391, 8277


def ray_env(token_file: Path) -> dict:
    """Token auth with this test's token (RAY_AUTH_TOKEN_PATH reaches the head, the job and `ray job` alike);
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes 127.0.0.1 the node's address, so the head binds loopback only."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def plain(text: str) -> str:
    """CLI output without colour codes, lower-cased ('Job 'x' succeeded' is coloured)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text).lower()


def ray(token_file: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=ray_env(token_file), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def head_node(tmp_path_factory):
    """(dashboard address, token file) of a head node with the dashboard and job server, stopped afterwards."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("ray CLI not installed in this environment")
    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` makes: 256 random bits
    token.chmod(0o600)
    # A temp dir of its own (short: Ray's socket paths must fit 107 bytes) marks this head's processes,
    # so the test stops them and nothing else (`ray stop` would end every Ray of this user).
    temp_dir = tempfile.mkdtemp(prefix="rslad-ray-")
    started = ray(token, "start", "--head", f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}",
                  "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
                  "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{DASHBOARD_PORT}", token
    finally:
        stop(started_with(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_and_wait(address: str, token: Path, *command: str) -> tuple[str, str]:
    """`ray job submit` the command (this checkout as the working dir); returns (final status, logs)."""
    job_id = f"rslad-test-{time.time_ns()}"
    deadline = time.monotonic() + 90
    while True:
        submit = ray(token, "job", "submit", "--address", address, "--working-dir", str(REPO),
                     "--submission-id", job_id, "--no-wait", "--", *command)
        # a loaded machine registers the head's job agent a while after `ray start` returns
        if "No available agent to submit job" not in submit.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline = time.monotonic() + 420
    status = ""
    while time.monotonic() < deadline:
        done = ray(token, "job", "status", "--address", address, job_id)
        status = plain(done.stdout + done.stderr)
        if any(f" {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    got = ray(token, "job", "logs", "--address", address, job_id)
    return status, got.stdout + got.stderr


def test_job_submission_round_trip(head_node, tmp_path):
    address, token = head_node
    name = "cluster-smoke"
    search = ("python", "-m", "search.run", "space=alpha", "profile=smoke", "ray.address=auto", f"name={name}",
              f"storage={tmp_path / 'shared' / 'ray_results'}", f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
              f"train.teachers_dir={tmp_path / 'teachers'}", "num_samples=2", "train.epochs=2", "teachers.epochs=2")
    status, logs = submit_and_wait(address, token, *search)
    assert " succeeded" in status, status + logs[-4000:]
    assert "top trials by val_pgd_acc" in logs
    # results went where the command said (absolute paths), not into the job's temporary working dir
    assert (tmp_path / "shared" / "ray_results" / name).is_dir()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    runs = c.search_runs([c.get_experiment_by_name(name).experiment_id])
    assert sorted(r.data.tags["rslad.role"] for r in runs) == ["search", "trial", "trial"]

    # a trial no node of the cluster can hold is refused once joined, before any trial (the head has no GPU)
    status, logs = submit_and_wait(address, token, *search[:6], "name=cluster-gpu", *search[7:], "trial.gpus=1")
    assert " failed" in status, status + logs[-4000:]
    assert ("error: trial.gpus=1 can never run: the largest node of the cluster at ray.address=auto has 0 GPUs; "
            "allowed: trial.gpus <= 0") in logs
    assert c.get_experiment_by_name("cluster-gpu") is None
