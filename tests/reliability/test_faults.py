"""Faults during a real search lose nothing: the command on the smoke profile, tiny budgets, real Ray.

Three runs, each showing several things (Ray starts are the expensive part on 2 cores):
- SIGINT of the driver -> exit 130, KILLED runs -> resume refused from a folder others can write and
  with another space -> resume with the interrupted trial's newest checkpoint torn: it goes on from the
  one before (the warning names the file), ASHA keeps its rung records, trials it stopped stay stopped,
  one MLflow run per trial with each epoch once; a local Ray listens on 127.0.0.1 only.
- a trial's worker killed (retried from its checkpoint), then SIGKILL of the driver -> resume with a
  corrected tracking.uri: the current command's store gets the records, artifacts beside it.
- a non-finite loss fails its trial at once: no retry, the run FAILED with the reason, exit 1.
- after a local Ray starts in-process, SIGTERM is still the driver's (ray.init installs its own).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from commands import client, run_search, runs_of, start_search, steps, wait_for

from .conftest import TINY, trial_progress
from .procs import cmdline, descendants, kill_group, listening_addresses

pytestmark = pytest.mark.slow

LOOPBACK = {"127.0.0.1", "::1"}


def statuses(children: dict) -> dict[str, tuple[str, str]]:
    """trial id -> (MLflow run status, rslad.status)."""
    return {t: (r.info.status, r.data.tags.get("rslad.status")) for t, r in children.items()}


def test_sigint_then_resume_from_a_torn_checkpoint_keeps_asha_and_every_epoch(tmp_path, trained_teacher):
    name, db = "s1", tmp_path / "mlruns.db"
    # 20 epochs: ASHA's rungs (25, 50 % of the schedule) fall at epochs 5 and 10, and the first trial to
    # reach a rung always goes on. So of two trials started together one ends early while the other goes on,
    # or both run to the end and two more start: a moment with a trial ended and another between its 2nd
    # checkpoint and its next rung always comes, three epochs long or more.
    epochs = 20
    args = ("space=alpha", *TINY, f"name={name}", "num_samples=4", f"train.epochs={epochs}",
            f"train.teachers_dir={trained_teacher}")
    proc = start_search(tmp_path, *args, log=tmp_path / "first.log")
    try:
        def one_ended_one_midway() -> bool:
            progress = trial_progress(tmp_path / "ray_results" / name).values()
            return (any(done for _, done in progress)
                    and any(2 <= e <= epochs - 4 and not done for e, done in progress))

        wait_for(one_ended_one_midway, 240, "one trial ended and another past epoch 2", every_s=0.05)
        listening = listening_addresses(descendants(proc.pid))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    finally:
        kill_group(proc)
    assert listening and listening <= LOOPBACK, f"a local search listens beyond loopback: {listening}"
    out = (tmp_path / "first.log").read_text()
    assert f"search {name} INTERRUPTED by SIGINT: " in out
    assert "Tuner.restore" not in out  # Tune's own advice (a Python API) is dropped; the command is given below
    resume = [ln for ln in out.splitlines() if ln.startswith("continue it with: python -m search.run ")]
    assert resume and resume[0].endswith(f"name={name} resume=true")

    c, parents, before = runs_of(db, name)
    assert [(p.info.status, p.data.tags["rslad.interrupted"]) for p in parents] == [("KILLED", "SIGINT")]
    interrupted = {t for t, (status, tag) in statuses(before).items() if tag == "interrupted"}
    assert interrupted and all(statuses(before)[t][0] == "KILLED" for t in interrupted)
    assert all(s in (("KILLED", "interrupted"), ("FINISHED", "finished"), ("FINISHED", "stopped_early"))
               for s in statuses(before).values())
    ended = {t: (r.data.tags["rslad.status"], r.data.tags["rslad.epochs_run"]) for t, r in before.items()
             if r.data.tags["rslad.status"] in ("finished", "stopped_early")}
    assert ended

    # resume is refused, before Ray, from a folder others can write, and with settings other than the search's
    folder = tmp_path / "ray_results" / name
    folder.chmod(0o770)
    refused = run_search(tmp_path, *args, "resume=true", timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: refusing to resume from {folder}: others can write it (mode 770, owner uid {folder.stat().st_uid}) "
        f"and resume unpickles the search's state from there; make it yours alone (chown, chmod go-w {folder}) "
        "if you trust its contents"]
    folder.chmod(0o700)
    refused = run_search(tmp_path, *[a.replace("space=alpha", "space=rsl_source") for a in args], "resume=true",
                         timeout=120)
    assert refused.returncode == 2 and "space (alpha -> rsl_source)" in refused.stderr

    # the trial caught mid-way (others may have just started, without a checkpoint yet)
    torn_trial = max(interrupted, key=lambda t: int(before[t].data.tags.get("rslad.epochs_run", 0)))
    torn = Path(before[torn_trial].data.tags["rslad.checkpoint_dir"]) / "state.pt"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    resumed = run_search(tmp_path, *args, "resume=true")
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f"trial {torn_trial}: checkpoint {torn} (" in log and "does not load; continuing from " in log
    assert "ASHA continues with its rung records from before the resume" in log

    c, parents, after = runs_of(db, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(after) == 4 and set(before) <= set(after), "one MLflow run per trial, the same runs"
    for trial, run in after.items():
        assert run.info.status == "FINISHED" and run.data.tags["rslad.status"] in ("finished", "stopped_early")
        assert steps(c, run) == list(range(1, int(run.data.tags["rslad.epochs_run"]) + 1)), trial
    assert {t: (after[t].data.tags["rslad.status"], after[t].data.tags["rslad.epochs_run"]) for t in ended} == ended, \
        "trials that ended (ASHA-stopped ones too) stay as they ended"
    assert after[torn_trial].data.tags["rslad.restore_warning"].startswith(f"checkpoint {torn} (")
    # it went on from the checkpoint before the torn one: nothing it had done was lost
    assert int(after[torn_trial].data.tags["rslad.epochs_run"]) >= int(before[torn_trial].data.tags["rslad.epochs_run"])
    # one Optuna trial per Ray trial across the interruption, ended as the runs say (ASHA's stops PRUNED)
    import optuna

    from search.study import ORPHAN_REASON

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")
    # suggested after the searcher state Tune saved last, never run by Ray: FAIL, not left RUNNING
    orphans = [t for t in study.trials if t.system_attrs.get("fail_reason") == ORPHAN_REASON]
    assert all(t.state.name == "FAIL" for t in orphans)
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials if t not in orphans}
    assert sorted(by_ray) == sorted(after)
    assert {t: (s.state.name, len(s.intermediate_values)) for t, s in by_ray.items()} == {
        t: ({"finished": "COMPLETE", "stopped_early": "PRUNED"}[r.data.tags["rslad.status"]],
            int(r.data.tags["rslad.epochs_run"])) for t, r in after.items()}


def test_worker_kill_and_driver_sigkill_then_resume_writes_to_the_current_tracking_uri(tmp_path, trained_teacher):
    name, db, moved = "k1", tmp_path / "mlruns.db", tmp_path / "moved" / "mlruns.db"
    args = ("space=alpha", *TINY, f"name={name}", "num_samples=2", "max_concurrent=1", "train.epochs=8",
            f"train.teachers_dir={trained_teacher}")
    proc = start_search(tmp_path, *args, log=tmp_path / "first.log")
    try:
        def past_epoch_2() -> bool:  # trial 1 runs alone, first at every rung: it never stops early
            return any(e >= 2 and not done for e, done in trial_progress(tmp_path / "ray_results" / name).values())

        wait_for(past_epoch_2, 240, "the first trial past epoch 2", every_s=0.1)
        workers = [pid for pid in descendants(proc.pid) if "ImplicitFunc" in cmdline(pid)]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)  # the trial's worker dies: Tune retries the trial from its checkpoint
        store = {}

        def first_finished() -> bool:
            store["c"] = store.get("c") or client(db)
            return any(r.info.status == "FINISHED" for r in runs_of(db, name, store["c"])[2].values())

        wait_for(first_finished, 240, "the first trial finished after its retry", every_s=0.2)
        proc.send_signal(signal.SIGKILL)  # the second trial has at most just started
        proc.wait(30)
    finally:
        kill_group(proc)
    c, parents, before = runs_of(db, name)
    assert [p.info.status for p in parents] == ["RUNNING"]  # nobody was left to close it
    (killed_trial, first), = [(t, r) for t, r in before.items() if r.info.status == "FINISHED"]
    assert steps(c, first) == list(range(1, 9)), "the retried trial logged each epoch once"

    moved.parent.mkdir()
    resumed = run_search(tmp_path, *args, "resume=true", f"tracking.uri=sqlite:///{moved}")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    c2, parents2, after = runs_of(moved, name)
    saved = json.loads((tmp_path / "ray_results" / name / "rslad-search.json").read_text())
    assert [p.info.status for p in parents2] == ["FINISHED"]
    assert parents2[0].data.tags["rslad.search_id"] == saved["search_id"]
    exp = c2.get_experiment_by_name(name)
    assert exp.artifact_location == (moved.parent / "mlartifacts" / name).as_uri()
    (second,) = [r for t, r in after.items() if t != killed_trial]
    assert second.info.status == "FINISHED" and steps(c2, second)[-1] == int(second.data.tags["rslad.epochs_run"])
    assert runs_of(db, name)[1][0].info.status == "RUNNING", "the old store is left as it was"


def test_a_non_finite_loss_fails_the_trial_at_once_without_retries(tmp_path, trained_teacher):
    name = "nan1"
    proc = run_search(tmp_path, "space=alpha", *TINY, f"name={name}", "num_samples=1", "train.epochs=3",
                      "train.lr=1e12", "trial.max_failures=2", f"train.teachers_dir={trained_teacher}")
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "1 trial(s) failed; see their MLflow runs (tag rslad.error)" in proc.stdout
    assert "failed (not retried): non-finite training loss in epoch 1" in proc.stderr
    _, parents, children = runs_of(tmp_path / "mlruns.db", name)
    ((trial, run),) = children.items()
    assert run.info.status == "FAILED" and run.data.tags["rslad.status"] == "failed"
    assert run.data.tags["rslad.error"].startswith("non-finite training loss in epoch 1")
    trial_dir, = (tmp_path / "ray_results" / name).glob(f"train_trial_{trial}*")
    assert not list(trial_dir.glob("error*")), "Tune saw an error and retried the trial"
    assert [p.info.status for p in parents] == ["FINISHED"]


def test_after_a_local_ray_starts_the_driver_still_owns_sigterm_and_ray_listens_on_loopback(tmp_path, monkeypatch):
    """ray.init() installs SIGTERM handlers that exit (then abort) the driver: the search takes SIGTERM back."""
    import ray

    from search import driver
    from search.config import load_config
    from search.driver import start_ray

    import ray._private.ray_constants as ray_constants

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray of an earlier run: a fresh machine
    # what the command changes in its own process, put back for the rest of this test session
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    driver._received.clear()
    driver.install()  # TUNE_DISABLE_SIGINT_HANDLER is the monkeypatched one: restored after the test
    try:
        start_ray(load_config(["profile=smoke", "ray.num_cpus=1"]))
        assert signal.getsignal(signal.SIGTERM) is driver._handle
        listening = listening_addresses(descendants(os.getpid()))
        assert listening and listening <= LOOPBACK, listening
    finally:
        ray.shutdown()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        driver._received.clear()
