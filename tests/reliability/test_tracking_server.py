"""A tracking server that goes away costs a search nothing, and a resume leaves no orphan runs (issue 15, items 3, 4, 6).

The real command against a real `mlflow server` (one per module, SQLite behind it) that the tests kill (SIGKILL, for
longer than the MLflow client's retries) and start again on the same port and store:
- down mid-search, back mid-search: the trials never wait (no gap in their results), one warning and one "answers
  again" line, every trial one run with every epoch once and in order, nothing RUNNING, no `View run` lines;
- still down when the search ends: exit 0, the summary says how many writes wait and the command that writes them;
  `python -m search.tracking_sync` writes them once the server is back;
- (SQLite) the driver SIGKILLed right after a trial started, before Tune saved it: the resume closes that trial's run
  as KILLED, rslad.status=orphaned, tagged why; one run per Tune trial, nothing RUNNING.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from commands import client, run_command, run_search, runs_of, start_search, wait_for

from .conftest import TINY
from .procs import kill_group

pytestmark = pytest.mark.slow

MLFLOW = str(Path(sys.executable).parent / "mlflow")


class MlflowServer:
    """`mlflow server` on a free loopback port with a SQLite store, in a process group of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = folder / "server.db"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> float:
        """Start it and wait until it answers; returns the seconds that took."""
        began = time.monotonic()
        self.starts += 1
        with open(self.folder / f"server-{self.starts}.log", "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination",
                 str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "HOME": str(self.folder)})
        while time.monotonic() - began < timeout:
            assert self.proc.poll() is None, (self.folder / f"server-{self.starts}.log").read_text()[-3000:]
            if self.answers():
                return time.monotonic() - began
            time.sleep(0.25)
        pytest.fail(f"mlflow server did not answer within {timeout} s")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """Gone at once, as a crashed server or a lost network: every request is refused from now on."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait(30)
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    s.start()
    yield s
    s.kill()


def server_runs(server: MlflowServer, name: str, c=None) -> tuple:
    """(client, parent runs, trial runs by trial id) read from the server's own database (also while it is down)."""
    return runs_of(server.db, name, c)


def history(c, run) -> list[int]:
    """The epochs of val_pgd_acc in the order they were written."""
    return [m.step for m in sorted(c.get_metric_history(run.info.run_id, "val_pgd_acc"), key=lambda m: m.timestamp)]


def result_times(experiment: Path) -> dict[str, list[float]]:
    """trial id -> wall-clock times of its results (written by the trial's worker as it reports each epoch)."""
    out = {}
    for results in experiment.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = [float(r["timestamp"]) for r in rows]
    return out


def check_every_trial_once_in_order(c, parents, children, trials: int, epochs: int) -> None:
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == trials, sorted(children)
    for trial, run in children.items():
        assert (run.info.status, run.data.tags["rslad.status"]) == ("FINISHED", "finished"), trial
        assert history(c, run) == list(range(1, epochs + 1)), f"trial {trial}: each epoch once, in order"


def quiet(out: str) -> None:
    assert "View run" not in out and "View experiment" not in out, "MLflow's URL lines reach the console"
    assert "Traceback" not in out and "Retrying (Retry(" not in out, out[-3000:]


def test_a_server_down_mid_search_and_back_costs_nothing(tmp_path, trained_teacher, server):
    name, epochs, trials = "outage1", 50, 3
    args = ("space=alpha", *TINY, f"name={name}", f"num_samples={trials}", "max_concurrent=2", "scheduler=none",
            f"train.epochs={epochs}", f"tracking.uri={server.uri}", f"train.teachers_dir={trained_teacher}")
    experiment = tmp_path / "ray_results" / name
    proc = start_search(tmp_path, *args, log=tmp_path / "search.log")
    try:
        store = {}

        def an_epoch_on_the_server() -> bool:
            store["c"] = store.get("c") or client(server.db)
            return any(int(r.data.tags.get("rslad.epochs_run", 0)) >= 1
                       for r in server_runs(server, name, store["c"])[2].values())

        wait_for(an_epoch_on_the_server, 240, "the first epoch written to the server", every_s=0.2)
        server.kill()
        down_at = time.time()
        server.start()
        back_at = time.time()
        assert proc.poll() is None, "the search ended before the server was back: make it longer"
        assert proc.wait(300) == 0
    finally:
        kill_group(proc)
    out = (tmp_path / "search.log").read_text()
    quiet(out)
    down = [ln for ln in out.splitlines() if "search.tracking_queue: MLflow server" in ln and "does not answer" in ln]
    back = [ln for ln in out.splitlines() if f"MLflow server {server.uri} answers again" in ln]
    assert len(down) == 1 and len(back) == 1, out[-4000:]
    assert f"MLflow server {server.uri} does not answer (Connection refused): the search goes on" in down[0]
    assert "write(s) of this search are not in" not in out, "everything was written once the server was back"

    # the trials never waited for the server: no gap in their results during the outage
    times = result_times(experiment)
    during = [t for ts in times.values() for t in ts if down_at <= t <= back_at]
    assert len(during) >= 10, f"{len(during)} epochs during the {back_at - down_at:.0f} s outage"
    gaps = {trial: max(b - a for a, b in itertools.pairwise(ts)) for trial, ts in times.items()}
    assert max(gaps.values()) < 10, f"a trial waited: longest gap between epochs {gaps}"

    c, parents, children = server_runs(server, name)
    check_every_trial_once_in_order(c, parents, children, trials, epochs)
    assert not any((experiment / "mlflow-queue").glob("*0.json")), "nothing left queued"


def test_a_server_still_down_at_the_end_then_the_sync_command_writes_the_rest(tmp_path, trained_teacher, server):
    name, epochs, trials = "outage2", 12, 2
    args = ("space=alpha", *TINY, f"name={name}", f"num_samples={trials}", "max_concurrent=2", "scheduler=none",
            f"train.epochs={epochs}", f"tracking.uri={server.uri}", f"train.teachers_dir={trained_teacher}")
    proc = start_search(tmp_path, *args, log=tmp_path / "search.log")
    try:
        store = {}

        def trials_on_the_server() -> bool:
            store["c"] = store.get("c") or client(server.db)
            return len(server_runs(server, name, store["c"])[2]) == trials

        wait_for(trials_on_the_server, 240, "both trials' runs on the server", every_s=0.2)
        server.kill()
        assert proc.wait(300) == 0
    finally:
        kill_group(proc)
    out = (tmp_path / "search.log").read_text()
    quiet(out)
    assert f"search {name}: top trials by val_pgd_acc" in out
    assert len([ln for ln in out.splitlines() if f"MLflow server {server.uri} does not answer" in ln]) == 1
    pending = [ln for ln in out.splitlines() if ln.startswith("mlflow: ")]
    assert len(pending) == 1 and f"write(s) of this search are not in {server.uri} yet" in pending[0], out[-3000:]
    command = out.split("or now: python -m ", 1)[1].splitlines()[0].split()
    assert command[:2] == ["search.tracking_sync", f"name={name}"]

    # what the server has now: runs left RUNNING by the outage, not by the search
    c, _, before = server_runs(server, name)
    assert any(r.info.status == "RUNNING" for r in before.values())

    refused = run_command(tmp_path, *command, timeout=120)  # the server is still down
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: tracking.uri={server.uri}: the MLflow server "
                                                                 "does not answer"), refused.stderr
    server.start()
    synced = run_command(tmp_path, *command, timeout=120)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.startswith(f"search {name}: wrote ") and "queued MLflow write(s)" in synced.stdout
    c, parents, children = server_runs(server, name)
    check_every_trial_once_in_order(c, parents, children, trials, epochs)
    assert not any((tmp_path / "ray_results" / name / "mlflow-queue").glob("*0.json")), "nothing left queued"


def test_a_trial_tune_never_saved_leaves_no_running_run_after_the_resume(tmp_path, trained_teacher, monkeypatch):
    """The driver SIGKILLed while the second trial runs, before Tune saved that trial: its run is the orphan."""
    name, db = "orphan1", tmp_path / "mlruns.db"
    args = ("space=alpha", *TINY, f"name={name}", "num_samples=3", "max_concurrent=1", "scheduler=none",
            "train.epochs=6", f"train.teachers_dir={trained_teacher}")
    # Tune saves its state at the first step, then every `sync_every_n_trial_checkpoints` checkpoints of a trial: with a
    # checkpoint at the last epoch only and no periodic save, the second trial is never saved before it ends.
    first_args = (*args, "trial.checkpoint_every=100")
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    proc = start_search(tmp_path, *first_args, log=tmp_path / "first.log")
    try:
        store = {}

        def second_trial_past_epoch_1() -> bool:
            store["c"] = store.get("c") or client(db)
            runs = runs_of(db, name, store["c"])[2].values()
            return len(runs) == 2 and any(r.info.status == "RUNNING" and int(r.data.tags.get("rslad.epochs_run", 0)) >= 1
                                          for r in runs)

        wait_for(second_trial_past_epoch_1, 240, "the second trial past its first epoch", every_s=0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S")
    _, _, before = runs_of(db, name)
    (lost,) = [t for t, r in before.items() if r.info.status == "RUNNING"]

    resumed = run_search(tmp_path, *first_args, "resume=true")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    from ray.tune import ExperimentAnalysis

    tune_trials = {t.trial_id for t in ExperimentAnalysis(str(tmp_path / "ray_results" / name)).trials}
    assert lost not in tune_trials, "Tune had saved the trial after all: not the case under test"
    _, parents, after = runs_of(db, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not [t for t, r in after.items() if r.info.status == "RUNNING"]
    assert set(after) == tune_trials | {lost}, "one run per trial Tune knows, and the orphan"
    orphan = after[lost]
    assert (orphan.info.status, orphan.data.tags["rslad.status"]) == ("KILLED", "orphaned")
    assert orphan.data.tags["rslad.orphaned"].startswith("the driver stopped before Tune saved this trial")
    for trial in tune_trials:
        assert after[trial].info.status == "FINISHED" and after[trial].data.tags["rslad.status"] == "finished"
