"""search/tracking_queue.py and the tracker's operations, without a server: the queue persists every write before the
callback returns, writes in order, is bounded, survives a crash, never makes a callback wait for a server that does not
answer, and says so once (and once when it is back). Then the RunWriter on a SQLite store: runs found by Ray trial id,
epochs once after a replay, orphans closed; and the checkpoint tag keeps its scheme."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from search.tracking_queue import Journal, WriteQueue, queue_folder


class Down(Exception):
    """What a fake client raises while its server is down."""


class FakeServer:
    """apply() records ops in order; while `down` it raises Down (after `delay_s`, like a client retrying)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.down = False
        self.delay_s = delay_s
        self.written: list[dict] = []
        self.refuse: set[int] = set()  # ops (by their "n") answered with a permanent refusal

    def apply(self, op: dict) -> None:
        if self.down:
            time.sleep(self.delay_s)
            raise Down("connection refused")
        if op.get("n") in self.refuse:
            raise ValueError("INVALID_PARAMETER_VALUE")
        self.written.append(op)

    def probe(self) -> bool:
        return not self.down


def make_queue(folder, server: FakeServer, **kw) -> WriteQueue:
    kw.setdefault("probe_every_s", 0.05)
    return WriteQueue(Journal(str(folder), target={"tracking_uri": "http://fake"}), server.apply, probe=server.probe,
                      transient=lambda err: isinstance(err, Down), target="http://fake", **kw)


def ops(*numbers: int, kind: str = "tags") -> list[dict]:
    return [{"op": kind, "n": n} for n in numbers]


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_put_is_on_disk_before_it_returns_and_written_in_order(tmp_path):
    server = FakeServer()
    server.down = True
    q = make_queue(tmp_path / "q", server)
    q.put(ops(1, 2))
    q.put(ops(3))
    journal = Journal(str(tmp_path / "q"))
    assert [op["n"] for _, seg in journal.load() for op in seg] == [1, 2, 3]
    assert journal.read_target() == {"tracking_uri": "http://fake"}
    assert oct((tmp_path / "q").stat().st_mode & 0o777) == "0o700"
    server.down = False
    q.start()
    q.put(ops(4))
    assert q.drain() == 0
    q.stop()
    assert [op["n"] for op in server.written] == [1, 2, 3, 4]
    assert journal.segments() == []  # written segments are removed


def test_a_crash_loses_nothing_and_the_next_command_writes_the_rest_first(tmp_path):
    server = FakeServer()
    first = make_queue(tmp_path / "q", server)  # its writer never runs: the server was down, then the driver died
    for n in range(5):
        first.put(ops(n))
    del first
    second = make_queue(tmp_path / "q", server)
    assert second.replayed == 5 and second.pending == 5
    second.put(ops(5))  # the new command's own writes come after the old ones
    assert second.flush() == 0
    assert [op["n"] for op in server.written] == [0, 1, 2, 3, 4, 5]


def test_a_segment_written_partly_before_a_crash_is_replayed_whole(tmp_path):
    server = FakeServer()
    q = make_queue(tmp_path / "q", server)
    q.put(ops(1, 2, 3))
    calls = []

    def dies_after_two(op):
        calls.append(op["n"])
        if len(calls) == 3:
            raise SystemExit("driver killed")  # not an Exception: nothing catches it
        server.apply(op)

    crashing = make_queue(tmp_path / "q", server)
    crashing._apply = dies_after_two
    with pytest.raises(SystemExit):
        crashing.flush()
    assert [op["n"] for op in server.written] == [1, 2]
    again = make_queue(tmp_path / "q", server)
    assert again.flush() == 0
    assert [op["n"] for op in server.written] == [1, 2, 1, 2, 3]  # ops are idempotent (RunWriter): harmless


def test_the_queue_is_bounded_metrics_go_first_and_statuses_stay(tmp_path, caplog):
    server = FakeServer()
    server.down = True
    q = make_queue(tmp_path / "q", server, max_ops=3)
    with caplog.at_level(logging.WARNING, "search.tracking_queue"):
        q.put(ops(1, 2, 3, kind="metrics"))
        q.put(ops(4, kind="metrics"))
        q.put(ops(5, kind="metrics") + ops(6, kind="end"))
        q.put(ops(7, kind="metrics"))
    assert q.pending == 4 and q.dropped == 3
    full = ("MLflow write queue full (3 writes pending for http://fake): per-epoch metrics are dropped until it "
            "drains; run statuses and tags are still kept")
    assert [r.message for r in caplog.records if "full" in r.message] == [full]
    server.down = False
    assert q.flush() == 0
    assert [op["n"] for op in server.written] == [1, 2, 3, 6]


def test_a_server_that_does_not_answer_never_makes_a_callback_wait_and_is_announced_once(tmp_path, caplog):
    server = FakeServer(delay_s=3.0)  # each write to the dead server hangs 3 s (a client retrying)
    q = make_queue(tmp_path / "q", server, stuck_after_s=1.0)
    q.start()
    q.put(ops(0))
    assert q.drain() == 0
    server.down = True
    with caplog.at_level(logging.INFO, "search.tracking_queue"):
        slowest = 0.0
        for n in range(1, 41):  # 2 s of epochs while the writer is stuck, then probing
            start = time.monotonic()
            q.put(ops(n, kind="metrics"))
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.05)
        assert slowest < 0.5, f"a callback waited {slowest:.2f} s"
        wait_until(lambda: q._down)
        time.sleep(0.3)  # several probes while down
        server.down = False
        assert q.drain() == 0
    q.stop()
    assert [op["n"] for op in server.written] == list(range(41))
    messages = [r.message for r in caplog.records]
    down = [m for m in messages if "does not answer" in m]
    back = [m for m in messages if m.startswith("MLflow server http://fake answers again")]
    assert len(down) == 1 and len(back) == 1, messages
    assert down[0].startswith("MLflow server http://fake does not answer (no answer for 1 s): the search goes on, and "
                              f"its MLflow writes are queued in {tmp_path / 'q'} (")


def test_a_write_the_server_refuses_is_skipped_not_retried_forever(tmp_path, caplog):
    server = FakeServer()
    server.refuse = {2}
    q = make_queue(tmp_path / "q", server)
    q.put(ops(1, 2, 3))
    with caplog.at_level(logging.WARNING, "search.tracking_queue"):
        assert q.flush() == 0
    assert [op["n"] for op in server.written] == [1, 3] and q.skipped == 1
    assert any("MLflow refused a queued write (tags of the search)" in r.message for r in caplog.records)


def test_a_server_that_answers_but_keeps_failing_one_write_is_skipped_after_a_few_tries(tmp_path):
    attempts = []

    def flaky(op):
        if op["n"] == 2:
            attempts.append(op)
            raise Down("HTTP 500")
        server.apply(op)

    server = FakeServer()
    q = WriteQueue(None, flaky, probe=lambda: True, transient=lambda err: isinstance(err, Down), target="x",
                   probe_every_s=0.01)
    q.put(ops(1, 2, 3))
    q.start()
    assert q.drain() == 0
    q.stop()
    assert len(attempts) == 5 and [op["n"] for op in server.written] == [1, 3]


def test_a_uri_folder_goes_through_pyarrow(tmp_path):
    folder = queue_folder(f"file://{tmp_path}/runs/s1")
    assert folder == f"file://{tmp_path}/runs/s1/mlflow-queue"
    j = Journal(folder, target={"tracking_uri": "http://x"})
    j.write(0, ops(1))
    j.write(1, ops(2))
    assert j.segments() == [0, 1] and j.read(1) == ops(2) and j.read_target() == {"tracking_uri": "http://x"}
    j.remove(0)
    assert Journal(folder).segments() == [1]
    assert (tmp_path / "runs" / "s1" / "mlflow-queue" / "000000000001.json").is_file()


# --- the tracker's operations on a real (SQLite) store ------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (creating its tables takes seconds)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/m.db"
    MlflowClient(uri).search_experiments()
    return uri


def trial(tid: str, epochs: int = 3, status: str = "RUNNING", **last) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=status, config={"alpha_ratio": 1.0, "train": {"epochs": epochs}},
                           last_result={"epoch": epochs, **last}, error_file=None)


def steps(client, run_id: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, "val_pgd_acc"), key=lambda m: m.timestamp)]


def test_operations_name_trials_not_runs_so_a_late_replay_lands_once_and_in_order(store):
    from search.tracking import RunWriter, complete_plan, now_ms, run_name, trial_params
    from trainables.schema import EPOCHS_RUN, STATUS, TRIAL_ID

    t = trial("t1", status="TERMINATED")
    start = {"op": "start", "tags": {"rslad.metric": "val_pgd_acc"}, "params": {"space": "alpha"}, "artifacts": {},
             "searched": ["alpha_ratio"]}
    epoch = [{"op": "metrics", "trial": "t1", "step": e, "time": now_ms() + e, "metrics": {"val_pgd_acc": e / 10}}
             for e in (1, 2, 3)]
    segment = [start, {"op": "open", "trial": "t1", "name": run_name(t), "params": trial_params(t.config)},
               *epoch, {"op": "end", "trial": "t1", **complete_plan(t)}]
    first = RunWriter(store, "late")
    for op in segment[:4]:  # the driver died after epoch 2
        first.apply(op)
    again = RunWriter(store, "late")  # the next command replays the whole segment
    for op in segment:
        again.apply(op)
    c = again.client
    exp = c.get_experiment_by_name("late")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get(TRIAL_ID) == "t1"]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags[STATUS] == "finished" and run.data.tags[EPOCHS_RUN] == "3"
    assert steps(c, run.info.run_id) == [1, 2, 3]
    assert run.data.params["search.alpha_ratio"] == "1.0"
    # a metric op of a trial whose open op was written by an earlier command: the run is found by tag
    third = RunWriter(store, "late")
    third.apply({"op": "metrics", "trial": "t1", "step": 3, "time": now_ms(), "metrics": {"val_pgd_acc": 0.9}})
    assert steps(c, run.info.run_id) == [1, 2, 3]


def test_runs_of_trials_tune_never_saved_are_closed_as_orphaned_on_resume(store):
    from search.tracking import ORPHAN_REASON, ORPHAN_TAG, RunWriter
    from trainables.schema import STATUS, TRIAL_ID

    w = RunWriter(store, "orph")
    w.apply({"op": "start", "tags": {}, "params": {"p": "1"}, "artifacts": {}, "searched": []})
    for tid in ("known", "lost"):
        w.apply({"op": "open", "trial": tid, "name": f"x · {tid}", "params": {}})
    resumed = RunWriter(store, "orph")
    resumed.apply({"op": "orphans", "known": ["known"]})
    c = resumed.client
    exp = c.get_experiment_by_name("orph")
    runs = {r.data.tags.get(TRIAL_ID): r for r in c.search_runs([exp.experiment_id]) if TRIAL_ID in r.data.tags}
    assert runs["known"].info.status == "RUNNING", "a trial Tune restored is reattached, not closed"
    lost = runs["lost"]
    assert (lost.info.status, lost.data.tags[STATUS], lost.data.tags[ORPHAN_TAG]) == ("KILLED", "orphaned",
                                                                                      ORPHAN_REASON)
    assert lost.info.run_name == "x · lost · orphaned"

    # another group's runs in the same experiment (a search's replicates) are not this tracker's orphans
    other = RunWriter(store, "orph")
    other.apply({"op": "open", "trial": "rep", "name": "rep", "params": {}, "group": "replicates"})
    RunWriter(store, "orph").apply({"op": "orphans", "known": ["known"]})
    RunWriter(store, "orph").apply({"op": "close", "plans": {}, "known": [], "group": "elsewhere"})
    assert c.get_run(other.run_of("rep")).info.status == "RUNNING"
    # an orphan whose trial turns out to be known after all is reattached, untagged
    RunWriter(store, "orph").apply({"op": "open", "trial": "lost", "name": "x · lost", "params": {}})
    again = c.get_run(lost.info.run_id)
    assert again.info.status == "RUNNING" and ORPHAN_TAG not in again.data.tags


def test_a_tracker_on_sqlite_writes_at_once_and_first_writes_what_an_outage_left_queued(store, tmp_path):
    from search.tracking import MLflowTracker
    from trainables.schema import STORAGE

    left = Journal(queue_folder(str(tmp_path / "runs" / "q1")))
    left.write(0, [{"op": "start", "tags": {}, "params": {"p": "1"}, "artifacts": {}, "searched": []},
                   {"op": "open", "trial": "old", "name": "old", "params": {}}])
    tracker = MLflowTracker(store, "q1", {STORAGE: str(tmp_path / "runs" / "q1")}, {"p": "1"}, {})
    tracker.setup()
    assert left.segments() == [] and tracker._queue is None
    tracker.on_trial_start(0, [], trial("new"))
    c = tracker.client
    exp = c.get_experiment_by_name("q1")
    assert sorted(r.data.tags.get("ray.trial_id", "parent") for r in c.search_runs([exp.experiment_id])) == [
        "new", "old", "parent"]


def test_a_tracker_with_a_server_never_calls_it_from_a_callback(tmp_path, monkeypatch):
    """An http tracker only queues: with nothing listening, callbacks return at once and every op is on disk."""
    from search import tracking
    from search.tracking import MLflowTracker
    from trainables.schema import STORAGE

    applied = threading.Event()
    monkeypatch.setattr(tracking.RunWriter, "apply", lambda self, op: (applied.set(), time.sleep(60)))
    monkeypatch.setattr(tracking, "server_answers", lambda uri, timeout=2: False)
    monkeypatch.setattr(tracking, "shorten_client_retries", lambda: None)
    tracker = MLflowTracker("http://127.0.0.1:9", "h1", {STORAGE: str(tmp_path / "h1")}, {}, {})
    start = time.monotonic()
    tracker.setup()
    t = trial("a")
    tracker.on_trial_start(0, [t], t)
    for e in range(1, 4):
        tracker.on_trial_result(0, [t], t, {"epoch": e, "val_pgd_acc": 0.5})
    assert time.monotonic() - start < 1.0
    assert applied.wait(5)  # the writer is stuck in its first write, the callbacks were not
    pending = [op["op"] for _, seg in Journal(queue_folder(str(tmp_path / "h1"))).load() for op in seg]
    assert pending == ["start", "open", "tags", "metrics", "metrics", "metrics"]
    tracker._queue._stopping = True


def test_the_checkpoint_tag_keeps_the_scheme_of_object_storage():
    from search.tracking import checkpoint_uri

    def checkpoint(path, type_name):
        return SimpleNamespace(path=path, filesystem=SimpleNamespace(type_name=type_name))

    assert checkpoint_uri(checkpoint("/runs/s1/train_trial_x/checkpoint_000003", "local")) == \
        "/runs/s1/train_trial_x/checkpoint_000003"
    assert checkpoint_uri(checkpoint("bucket/runs/s1/t/checkpoint_000003", "s3")) == \
        "s3://bucket/runs/s1/t/checkpoint_000003"
    assert checkpoint_uri(checkpoint("bucket/runs/t/c", "gcs")) == "gs://bucket/runs/t/c"
    fsspec = SimpleNamespace(type_name="py", handler=SimpleNamespace(fs=SimpleNamespace(protocol=("abfs", "az"))))
    assert checkpoint_uri(SimpleNamespace(path="c/runs/t", filesystem=fsspec)) == "abfs://c/runs/t"

    from ray.tune import Checkpoint  # the real thing, on a local folder

    assert checkpoint_uri(Checkpoint("/tmp/some/checkpoint_000001")) == "/tmp/some/checkpoint_000001"


def test_quiet_drops_mlflows_view_run_lines():
    from search.driver import ENVIRONMENT

    assert ENVIRONMENT["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


def test_the_sync_command_explains_itself_and_writes_what_waits(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from search.tracking import complete_plan, now_ms
    from search.storage import write_record
    from search.tracking_sync import cli
    from trainables.schema import STATUS, TRIAL_ID

    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m search.tracking_sync key=value") and "tracking.uri" in out
    assert cli(["name=s1", f"storage={tmp_path}"]) == 2  # no search of that name there: one line, nothing done
    assert capsys.readouterr().err.startswith(f"error: there is no search named 's1' at {tmp_path}/s1 ")
    write_record(f"{tmp_path}/s1", {"search_id": "x", "name": "s1", "settings": {}})
    assert cli(["name=s1", f"storage={tmp_path}"]) == 0
    assert capsys.readouterr().out == f"search s1: no MLflow writes pending in {tmp_path}/s1/mlflow-queue\n"
    assert cli(["storage=x"]) == 2

    t = trial("t9", epochs=2, status="TERMINATED")
    Journal(queue_folder(f"{tmp_path}/s1"), target={"tracking_uri": store, "experiment": "s1"}).write(0, [
        {"op": "start", "tags": {}, "params": {"p": "1"}, "artifacts": {}, "searched": []},
        {"op": "open", "trial": "t9", "name": "t9", "params": {}},
        *({"op": "metrics", "trial": "t9", "step": e, "time": now_ms() + e, "metrics": {"val_pgd_acc": 0.5}}
          for e in (1, 2)),
        {"op": "end", "trial": "t9", **complete_plan(t)}])
    assert cli(["name=s1", f"storage={tmp_path}"]) == 0  # tracking.uri: the one saved with the queue
    assert capsys.readouterr().out == f"search s1: wrote 5 queued MLflow write(s) to {store}\n"
    c = MlflowClient(store)
    (run,) = [r for r in c.search_runs([c.get_experiment_by_name("s1").experiment_id]) if TRIAL_ID in r.data.tags]
    assert (run.info.status, run.data.tags[STATUS]) == ("FINISHED", "finished") and steps(c, run.info.run_id) == [1, 2]


def test_flush_stops_when_the_server_goes_away_and_retries_a_write_it_fails_while_answering(tmp_path):
    server = FakeServer()
    q = make_queue(tmp_path / "q", server)
    q.put(ops(1))
    q.put(ops(2))
    server.down = True
    assert q.flush() == 2 and server.written == []
    failures = []

    def fails_twice(op):
        if len(failures) < 2:
            failures.append(op)
            raise Down("HTTP 503")
        server.apply(op)

    server.down = False
    q._apply = fails_twice
    assert q.flush() == 0
    assert [op["n"] for op in server.written] == [1, 2] and len(failures) == 2
