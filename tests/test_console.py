"""search/console.py: the live console's rendering (a pure function of a snapshot) and the Tune callback."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from search.console import (
    LiveConsole,
    Snapshot,
    TrialRow,
    clock,
    eta_seconds,
    render,
    row_of,
)
from search.plan import asha_expected_trial_epochs
from search.tracking import trial_status


def row(tid: str, status: str, epoch: int, metric: float | None = None, best: float | None = None,
        ended_at: float = 0.0, epochs: int = 8, **params: Any) -> TrialRow:
    return TrialRow(tid, params or {"alpha_ratio": 1.0}, epoch, epochs, metric, best, status, ended_at)


ROWS = (
    row("aaaa0001", "finished", 8, 0.61, 0.6767, ended_at=100.0, alpha_ratio=5.0),
    row("aaaa0002", "stopped_early", 2, 0.40, 0.41, ended_at=300.0, alpha_ratio=0.1234567),
    row("aaaa0003", "running", 5, 0.55, 0.58, alpha_ratio=2.694),
    row("aaaa0004", "failed", 1, None, None, ended_at=200.0),
    row("aaaa0005", "pending", 0),
)
SNAP = Snapshot(name="alpha-smoke", metric="val_pgd_acc", total=8, rows=ROWS, elapsed_s=192.4, eta_s=100.0)


def test_render_shows_counts_best_and_running_then_recently_ended_trials():
    lines = render(SNAP).splitlines()
    assert lines[0] == ("alpha-smoke: 3/8 done (1 finished, 1 stopped early, 1 failed), 1 running | "
                        "elapsed 3:12, ETA 1:40")
    assert lines[1] == "best val_pgd_acc 0.6767: trial aaaa0001 alpha_ratio=5"
    assert lines[2].split() == ["trial", "params", "epoch", "val_pgd_acc", "best", "status"]
    table = [ln.split() for ln in lines[3:]]
    # Running first, then ended trials newest first; pending trials are counted, not listed.
    assert [r[0] for r in table] == ["aaaa0003", "aaaa0002", "aaaa0004", "aaaa0001"]
    assert table[0] == ["aaaa0003", "alpha_ratio=2.694", "5/8", "0.5500", "0.5800", "running"]
    assert table[1] == ["aaaa0002", "alpha_ratio=0.1235", "2/8", "0.4000", "0.4100", "stopped_early"]
    assert table[2] == ["aaaa0004", "alpha_ratio=1", "1/8", "-", "-", "failed"]
    assert all(len(line) <= 100 for line in lines)


def test_render_fits_the_width_with_many_params_and_rows_and_says_what_it_left_out():
    many = {f"param_{i}": 0.123456 * i for i in range(12)}
    rows = tuple(row(f"t{i:07d}", "running", i % 8, 0.5, 0.5, **many) for i in range(20))
    text = render(Snapshot("joint-paper-20261125-130201", "val_pgd_acc", 64, rows, 7200.0, None), width=100,
                  max_rows=6)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0].endswith("ETA -") and "0/64 done" in lines[0] and "20 running" in lines[0]
    assert len(lines) == 2 + 1 + 6 + 1 and lines[-1] == "... 14 more"
    assert "~" in lines[3]  # the params column is cut visibly, not silently
    snap = Snapshot("joint-paper-20261125-130201", "val_pgd_acc", 64, rows, 7200.0, 60.0)
    for width, head in ((72, "0/64 done, 20 running | elapsed 2:00:00, ETA 1:00"), (56, "0/64 done, 20 run | 2:00:00, ETA 1:00")):
        narrow = render(snap, width=width)
        assert max(len(line) for line in narrow.splitlines()) <= width
        assert narrow.splitlines()[0].endswith(head) and narrow.startswith("joint-paper")


def test_an_upper_bound_eta_is_marked():
    text = render(Snapshot("s", "val_pgd_acc", 8, ROWS, 10.0, eta_s=3725.0, eta_is_bound=True))
    assert text.splitlines()[0].endswith("ETA <=1:02:05")


def test_eta_counts_remaining_epochs_of_running_and_unstarted_trials():
    # running: 3 left; pending: 8 left; 3 trials not created yet: 24 -> 35 epochs at 0.5 epochs/s = 70 s, a bound.
    assert eta_seconds(ROWS, 8, 0.5) == (70.0, True)
    # With an ASHA plan of 30 trial-epochs: 30 - (8+2+5+1+0) run = 14 left -> 28 s, an estimate.
    assert eta_seconds(ROWS, 8, 0.5, planned_trial_epochs=30) == (28.0, False)
    # A plan already used up still leaves what running trials must finish (3 + 8 epochs).
    assert eta_seconds(ROWS, 8, 0.5, planned_trial_epochs=5) == (22.0, False)
    assert eta_seconds(ROWS, 8, 0.0) == (None, False)
    ended = tuple(r for r in ROWS if r.status in ("finished", "stopped_early", "failed"))
    assert eta_seconds(ended, 3, 1.0) == (0.0, False)


def test_clock():
    assert [clock(5), clock(192.4), clock(3725), clock(None), clock(float("inf"))] == ["0:05", "3:12", "1:02:05",
                                                                                        "-", "-"]


def test_asha_expectation_by_hand():
    # smoke: grace 25 %, factor 2 -> rungs 25, 50: 25 + 25/2 + 50/4 = 50 % of 8 trials x 8 epochs
    assert asha_expected_trial_epochs(8, 8, 25, 2) == 32
    # paper alpha: grace 25 %, factor 3 -> rungs 25, 75: 25 + 50/3 + 25/9 = 44.44 % of 16 x 300
    assert asha_expected_trial_epochs(16, 300, 25, 3) == round(16 * 300 * (25 + 50 / 3 + 25 / 9) / 100)
    assert asha_expected_trial_epochs(4, 10, 100, 3) == 40  # no rung below max_t: every trial runs
    # a rung is judged at the first epoch that reaches it: 1-epoch trials all run their epoch; 6 epochs, rungs
    # 25 % and 75 % -> epochs 2 and 5: 2 * 2/3 + 5 * 2/9 + 6 * 1/9 = 3.11 epochs a trial
    assert asha_expected_trial_epochs(2, 1, 25, 3) == 2
    assert asha_expected_trial_epochs(9, 6, 25, 3) == 28


def test_expected_trial_epochs_of_the_paper_spaces():
    from search.plan import expected_trial_epochs, plan_search

    expected = {"alpha": (4800, 2133), "joint": (14400, 6400), "teacher": (2400, 1067), "rsl_source": (1200, 533),
                "epochs": (600, 267), "method": (2200, 2200)}
    assert {s: expected_trial_epochs(plan_search([f"space={s}"])) for s in expected} == expected


# --- the callback with fake Tune trials -------------------------------------------------------------------
@dataclass
class FakeTrial:
    trial_id: str
    status: str = "PENDING"
    config: dict = field(default_factory=lambda: {"alpha_ratio": 1.0, "train": {"epochs": 4}, "trial": {}})
    last_result: dict = field(default_factory=dict)

    def report(self, epoch: int, value: float) -> dict:
        best = max(value, self.last_result.get("best_val_pgd_acc", 0.0))
        self.status = "RUNNING"
        self.last_result = {"epoch": epoch, "val_pgd_acc": value, "best_val_pgd_acc": best, "timestamp": time.time()}
        return self.last_result


def test_row_status_uses_the_trackers_vocabulary():
    stopped = FakeTrial("s", "TERMINATED", last_result={"epoch": 2})
    finished = FakeTrial("f", "TERMINATED", last_result={"epoch": 4})
    assert row_of(stopped, "val_pgd_acc").status == trial_status(stopped) == "stopped_early"
    assert row_of(finished, "val_pgd_acc").status == trial_status(finished) == "finished"
    assert row_of(FakeTrial("e", "ERROR"), "val_pgd_acc").status == "failed"
    assert row_of(FakeTrial("r", "RUNNING"), "val_pgd_acc").status == "running"


def test_callback_counts_restored_trials_and_appends_blocks_to_a_log_at_most_every_interval():
    out = io.StringIO()
    console = LiveConsole("alpha-smoke", "val_pgd_acc", log_every_s=3600, stream=out, tty=False)
    console.setup(total_num_samples=4)
    # A resumed search: Tune's trials list starts with two trials that ended in the first session.
    restored = [FakeTrial("old00001", "TERMINATED"), FakeTrial("old00002", "TERMINATED")]
    restored[0].report(4, 0.6)
    restored[1].report(1, 0.2)
    restored[0].status = restored[1].status = "TERMINATED"
    new = FakeTrial("new00003")
    trials = [*restored, new]
    console.on_trial_result(0, trials, new, new.report(1, 0.3))
    console.on_trial_result(0, trials, new, new.report(2, 0.5))  # within the interval: nothing drawn
    new.status = "TERMINATED"
    new.report(4, 0.55)
    new.status = "TERMINATED"
    console.on_trial_complete(0, trials, new)
    console.on_experiment_end(trials)  # always drawn
    blocks = [b for b in out.getvalue().split("\n\n") if b.strip()]
    assert len(blocks) == 2
    assert blocks[0].startswith("alpha-smoke: 2/4 done (1 finished, 1 stopped early), 1 running")
    assert "new00003" in blocks[0] and "1/4" in blocks[0]
    assert blocks[1].startswith("alpha-smoke: 3/4 done (2 finished, 1 stopped early), 0 running")
    assert "best val_pgd_acc 0.6000: trial old00001" in blocks[1]
    assert "\x1b[" not in out.getvalue()


def test_a_log_gets_no_new_block_when_only_the_clock_moved():
    out = io.StringIO()
    console = LiveConsole("s", "val_pgd_acc", 2, log_every_s=0, stream=out, tty=False)
    trial = FakeTrial("t1")
    console.on_trial_result(0, [trial], trial, trial.report(1, 0.3))
    console.on_step_end(0, [trial])
    console.on_step_end(0, [trial])
    assert out.getvalue().count("s: 0/2 done") == 1


def test_a_terminal_gets_the_block_redrawn_in_place():
    out = io.StringIO()
    console = LiveConsole("s", "val_pgd_acc", 2, tty_every_s=0, stream=out, tty=True)
    trial = FakeTrial("t1")
    console.on_trial_result(0, [trial], trial, trial.report(1, 0.3))
    first = out.getvalue()
    console.on_trial_result(0, [trial], trial, trial.report(2, 0.4))
    second = out.getvalue()[len(first):]
    assert second.startswith(f"\x1b[{first.count(chr(10))}F\x1b[J") and "2/4" in second


def test_elapsed_continues_across_a_resume():
    import pickle

    console = LiveConsole("s", "val_pgd_acc", 2, stream=io.StringIO())
    console.set_state({"active_s": 100.0})
    state = console.get_state()
    assert state["active_s"] >= 100.0
    resumed = pickle.loads(pickle.dumps(console))  # Tune unpickles the callback, then set_state
    resumed.set_state(state)
    assert resumed.elapsed_s() == pytest.approx(state["active_s"], abs=1.0)


def test_trials_stopped_by_an_interrupt_are_shown_as_interrupted_not_as_ended():
    out = io.StringIO()
    console = LiveConsole("s", "val_pgd_acc", 3, log_every_s=3600, stream=out, tty=False)
    done, cut = FakeTrial("done0001"), FakeTrial("cut00002")
    trials = [done, cut]
    for trial in trials:
        console.on_trial_start(0, trials, trial)
    console.on_trial_result(0, trials, cut, cut.report(1, 0.3))
    done.report(4, 0.5)
    done.status = "TERMINATED"
    console.on_trial_complete(0, trials, done)
    cut.status = "TERMINATED"  # what Tune's cleanup does to running trials after Ctrl-C: no completion callback
    console.on_experiment_end(trials)
    last = out.getvalue().strip().split("\n\n")[-1]
    assert last.startswith("s: 1/3 done (1 finished), 0 running, 1 interrupted")
    assert [ln.split()[-1] for ln in last.splitlines()[3:]] == ["interrupted", "finished"]


def test_a_log_line_on_a_terminal_clears_the_block_which_is_drawn_again_below_it():
    import logging

    out = io.StringIO()
    console = LiveConsole("s", "val_pgd_acc", 2, tty_every_s=3600, stream=out, tty=True)
    console.setup(total_num_samples=2)
    trial = FakeTrial("t1")
    console.on_trial_result(0, [trial], trial, trial.report(1, 0.3))
    block = out.getvalue()
    logging.getLogger("search").warning("trial t1: something to say")
    assert out.getvalue() == block + f"\x1b[{block.count(chr(10))}F\x1b[J"
    console.on_trial_result(0, [trial], trial, trial.report(2, 0.4))  # within the interval, yet drawn again
    assert out.getvalue().endswith("\n") and "2/4" in out.getvalue()[len(block):]
    console.on_experiment_end([trial])
    assert not any(type(h).__name__ == "_ClearBeforeLog" for h in logging.getLogger().handlers)


def test_a_failed_trial_and_a_restore_warning_reach_the_log_at_once(caplog):
    import logging

    console = LiveConsole("s", "val_pgd_acc", 2, log_every_s=3600, stream=io.StringIO(), tty=False)
    trial = FakeTrial("t1")
    with caplog.at_level(logging.WARNING, logger="search"):
        console.on_trial_result(0, [trial], trial, {**trial.report(2, 0.3), "restore_warning": "checkpoint x (torn)"})
        trial.status = "TERMINATED"
        trial.last_result = {"epoch": 2, "val_pgd_acc": float("nan"), "failed_reason": "non-finite training loss"}
        console.on_trial_complete(0, [trial], trial)
    assert [r.getMessage() for r in caplog.records] == [
        "trial t1: checkpoint x (torn)", "trial t1 failed (not retried): non-finite training loss"]
