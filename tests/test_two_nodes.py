"""A search across machines: a head with no CPUs for trials, two worker nodes that cannot see the head's folders,
object storage on an S3-compatible server, the real commands run on the head (as `ray job submit` runs them).

How the worker nodes are kept from the head's files: each runs in a mount namespace of its own
(`unshare --mount`) with an empty tmpfs mounted over the test's head folder, so a path that exists only
on the head (teachers, the MLflow store, a storage folder) is missing there exactly as on a second
machine; /tmp and the code stay visible, as a shared root image would. Object storage is moto's S3
server on 127.0.0.1. Ray binds loopback only (tests/cluster_node.py).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from commands import env, runs_of, steps, wait_for
from reliability.conftest import TEACHER, TINY, train_teacher
from reliability.procs import kill_group, started_with, stop

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GCS_PORT, S3_PORT = 6393, 5097
WORKER_PORTS = (46011, 46013)  # node manager ports: how the test tells its two workers apart
BUCKET = "runs"


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Cluster:
    """The processes of the test cluster and the environment the commands on its head need."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.head = root / "head"  # hidden from the workers
        self.head.mkdir()
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` makes
        token.chmod(0o600)
        # Short (Ray's socket paths must fit 107 bytes) and marking this cluster's processes for the teardown.
        self.temp_dir = tempfile.mkdtemp(prefix="rslad-2n-")
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
                    # node-local copies (shipped files, soft labels) of this test only; the workers see /tmp
                    "RSLAD_NODE_CACHE": str(root / "node-cache")}
        self.s3 = None

    def run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def start_s3(self) -> None:
        self.s3 = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)], env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: not free(S3_PORT), 60, "the S3 server", every_s=0.3)
        made = self.run(sys.executable, "-c", f"import boto3; boto3.client('s3').create_bucket(Bucket='{BUCKET}')")
        assert made.returncode == 0, made.stderr

    def start_head(self) -> None:
        started = self.run(str(BIN / "ray"), "start", "--head", f"--port={GCS_PORT}", "--node-ip-address=127.0.0.1",
                           f"--temp-dir={self.temp_dir}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
                           "--disable-usage-stats")
        assert started.returncode == 0, started.stdout + started.stderr

    def start_worker(self, port: int) -> None:
        """A worker node with 1 CPU in its own mount namespace, the head folder hidden under an empty tmpfs."""
        inner = (f"mount -t tmpfs tmpfs {self.head} && exec {sys.executable} {REPO / 'tests' / 'cluster_node.py'} "
                 f"--address=127.0.0.1:{GCS_PORT} --node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 "
                 f"--node-manager-port={port} --disable-usage-stats")
        started = self.run("unshare", "--mount", "--propagation", "private", "bash", "-c", inner)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]

    def worker_processes(self, port: int) -> set[int]:
        return started_with(f"--node_manager_port={port}")

    def alive_nodes(self) -> int:
        """Nodes `ray status` lists as active (the head included)."""
        status = self.run(str(BIN / "ray"), "status", f"--address=127.0.0.1:{GCS_PORT}")
        active = status.stdout.split("Active:")[1].split("Pending:")[0] if "Active:" in status.stdout else ""
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))

    def stop(self) -> None:
        stop(started_with(self.temp_dir) | set().union(*(self.worker_processes(p) for p in WORKER_PORTS)))
        if self.s3 is not None:
            kill_group(self.s3)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (0 CPUs) and two workers (1 CPU each) that cannot see cluster.head, plus S3 with a bucket `runs`."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no mount namespace for the worker nodes")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the kernel refuses a mount namespace here ({probe.stderr.strip()}): no worker that cannot "
                    "see the head's folders")
    if not all(free(p) for p in (GCS_PORT, S3_PORT, *WORKER_PORTS)):
        pytest.skip("the test cluster's ports are taken (another test cluster running?)")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_s3()
        c.start_head()
        for port in WORKER_PORTS:
            c.start_worker(port)
        wait_for(lambda: c.alive_nodes() == 3, 60, "the head and two worker nodes", every_s=1)
        train_teacher(c.head / "teachers" / f"{TEACHER}.pt")  # the teacher exists on the head only
        yield c
    finally:
        c.stop()


def search(c: Cluster, name: str, *extra: str) -> tuple[str, ...]:
    return ("space=alpha", *TINY, f"name={name}", "ray.address=127.0.0.1:" + str(GCS_PORT),
            f"train.teachers_dir={c.head / 'teachers'}", f"tracking.uri=sqlite:///{c.head / 'mlruns.db'}",
            "trial.cpus=1", *extra)


def command(c: Cluster, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=c.head, env={**env(c.head), **c.env},
                          capture_output=True, text=True, timeout=timeout)


def s3_keys(c: Cluster, prefix: str) -> list[str]:
    listed = c.run(sys.executable, "-c", "import boto3\n"
                   f"for o in boto3.client('s3').list_objects_v2(Bucket='{BUCKET}', Prefix='{prefix}').get('Contents', []):"
                   " print(o['Key'])")
    return listed.stdout.split()


def test_the_heads_files_and_object_storage_are_enough(cluster):
    c, name = cluster, "two-nodes"
    storage = f"storage=s3://{BUCKET}/searches"
    done = command(c, "search.run", *search(c, name, storage, "num_samples=2", "train.epochs=3", "scheduler=none"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.split("top trials by val_pgd_acc")[1].splitlines()
    assert sum(1 for line in table if re.match(r"\s+\d+\s+[0-9a-f]{8}\s", line)) == 2, done.stdout[-2000:]  # a row each
    assert "shipping" in done.stderr and "Traceback" not in done.stderr

    db = c.head / "mlruns.db"
    mc, parents, trials = runs_of(db, name)
    assert [p.info.status for p in parents] == ["FINISHED"] and len(trials) == 2
    for run in trials.values():
        assert run.info.status == "FINISHED" and steps(mc, run) == [1, 2, 3]
        assert run.data.tags["rslad.checkpoint_dir"].startswith(f"s3://{BUCKET}/searches/{name}/")
    # the saved description, the trials' checkpoints and the shared soft labels are in the bucket
    keys = s3_keys(c, f"searches/{name}/")
    assert f"searches/{name}/rslad-search.json" in keys
    assert any("/rsl_cache/" in k and k.endswith("epoch_00000.pt") for k in keys), [k for k in keys if "checkpoint" not in k]

    # the final evaluation reads the models from object storage
    final = command(c, "analysis.finalize", f"name={name}", "top_k=2", "aa.n=20", f"tracking.uri=sqlite:///{db}")
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    _, _, trials = runs_of(db, name, mc)
    assert all("test/clean/best" in r.data.metrics for r in trials.values())
    report = command(c, "analysis.report", f"name={name}", f"tracking.uri=sqlite:///{db}")
    assert report.returncode == 0, report.stderr[-3000:]

    # resume reads the search back from the bucket (nothing left to run: it ends at once, records unchanged)
    again = command(c, "search.run", *search(c, name, storage, "num_samples=2", "train.epochs=3", "scheduler=none",
                                             "resume=true"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _, parents, trials = runs_of(db, name, mc)
    assert len(parents) == 1 and len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials.values())


def test_a_folder_of_the_head_as_storage_is_refused_naming_the_node(cluster):
    c = cluster
    refused = command(c, "search.run", *search(c, "head-folder", f"storage={c.head / 'ray_results'}",
                                               "num_samples=2", "train.epochs=2"))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert lines[0].startswith("error: node 127.0.0.1 (") and f"cannot see storage={c.head / 'ray_results'}" in lines[0]
    mc, parents, trials = runs_of(c.head / "mlruns.db", "head-folder")
    assert not parents and not trials  # refused before any trial: nothing recorded


def test_a_worker_node_lost_mid_trial(cluster):
    """Its trial continues on the other node from its last checkpoint in the bucket: one run, every epoch once."""
    c, name = cluster, "node-lost"
    log = c.head / "node-lost.log"
    proc = subprocess.Popen([sys.executable, "-m", "search.run",
                             *search(c, name, f"storage=s3://{BUCKET}/searches", "num_samples=2", "train.epochs=6",
                                     "scheduler=none", "trial.max_failures=3")],
                            cwd=c.head, env={**env(c.head), **c.env}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        db = c.head / "mlruns.db"

        def mid_trial() -> bool:
            mc, _, trials = runs_of(db, name)
            return len(trials) == 2 and all(2 <= len(steps(mc, r)) <= 4 for r in trials.values())

        wait_for(mid_trial, 240, "both trials past their second epoch", every_s=0.5)
        stop(cluster.worker_processes(WORKER_PORTS[1]), grace_s=0)  # the node dies: raylet and its workers
        assert proc.wait(400) == 0, log.read_text()[-4000:]
    finally:
        kill_group(proc)
    mc, parents, trials = runs_of(db, name)
    assert len(trials) == 2, log.read_text()[-3000:]
    for run in trials.values():
        assert run.info.status == "FINISHED" and steps(mc, run) == list(range(1, 7)), steps(mc, run)
