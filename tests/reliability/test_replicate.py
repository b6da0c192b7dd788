"""The finalists replicated over seeds, end to end on the smoke profile: a 2-trial search, `python -m search.replicate`
with top_k=2 and seeds=2 interrupted by SIGINT and continued by the same command, then finalize and the report read
the replicates back (tables with intervals, the verdict in words). One Ray start per command; about a minute."""

from __future__ import annotations

import signal

import pytest
from commands import run_command, run_search, runs_of, start_command, steps, wait_for

from analysis.finalize import finalize
from analysis.report import build_report

from .conftest import TINY, trial_progress
from .procs import kill_group

pytestmark = pytest.mark.slow

EPOCHS = 6


def test_replicates_run_to_the_end_continue_after_sigint_and_reach_the_report(tmp_path, trained_teacher):
    name, db = "rep1", tmp_path / "mlruns.db"
    searched = run_search(tmp_path, "space=alpha", *TINY, f"name={name}", "num_samples=2", f"train.epochs={EPOCHS}",
                          f"train.teachers_dir={trained_teacher}")
    assert searched.returncode == 0, (searched.stdout + searched.stderr)[-3000:]
    assert "95 % interval" in searched.stdout and "Wilson, from one run's 100 validation images" in searched.stdout
    _, _, trials = runs_of(db, name)
    assert all("best_val_pgd_acc_ci_low" in r.data.metrics for r in trials.values())

    args = (f"name={name}", "replicate.top_k=2", "replicate.seeds=2", "max_concurrent=1")
    dry = run_command(tmp_path, "search.replicate", *args, "dry_run=true")
    assert dry.returncode == 0 and "4 runs, 24 trial-epochs (no early stopping)" in " ".join(dry.stdout.split())
    assert not (tmp_path / "ray_results" / name / "replicates").exists(), "a dry run writes nothing"

    folder = tmp_path / "ray_results" / name / "replicates"
    proc = start_command(tmp_path, "search.replicate", *args, log=tmp_path / "first.log")
    try:
        wait_for(lambda: any(e >= 1 for e, _ in trial_progress(folder).values()), 240, "a replicate past epoch 1",
                 every_s=0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    finally:
        kill_group(proc)
    out = (tmp_path / "first.log").read_text()
    assert "INTERRUPTED by SIGINT" in out and f"continue it with: python -m search.replicate {' '.join(args)}" in out
    c, (parent,), before = runs_of(db, name)
    replicas = {t: r for t, r in before.items() if "rslad.replicate_of" in r.data.tags}
    assert replicas and parent.info.status == "FINISHED", "the search's parent is left as the search ended it"
    assert any(r.data.tags["rslad.status"] == "interrupted" and r.info.status == "KILLED" for r in replicas.values())

    # another seed count is refused before Ray, naming what differs
    refused = run_command(tmp_path, "search.replicate", *args[:2], "replicate.seeds=3", "max_concurrent=1")
    assert refused.returncode == 2 and "replicate.seeds (2 -> 3)" in refused.stderr

    again = run_command(tmp_path, "search.replicate", *args)  # the same command continues
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "4 of 4 replicates finished" in again.stdout
    assert "winner against each runner-up (best_val_pgd_acc, replicates only):" in again.stdout
    assert "2 paired seeds)" in again.stdout
    c, (parent,), after = runs_of(db, name)
    replicas = {t: r for t, r in after.items() if "rslad.replicate_of" in r.data.tags}
    assert len(replicas) == 4 and set(before) <= set(after), "one run per replicate, the interrupted one reopened"
    finalists = {r.data.tags["rslad.replicate_of"] for r in replicas.values()}
    assert finalists <= set(trials) and len(finalists) == 2
    for run in replicas.values():
        assert run.info.status == "FINISHED" and run.data.tags["rslad.status"] == "finished"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["seed"] == run.data.tags["rslad.replicate_seed"] in ("1", "2")
        assert run.data.params["order_seed"] == run.data.tags["rslad.replicate_seed"]
        assert run.data.params["data_seed"] == "0", "the validation split is the search's"
        assert steps(c, run) == list(range(1, EPOCHS + 1)), "every epoch once, to the end of the schedule"
    assert parent.data.tags["rslad.replicates"] == "finished"
    assert all(parent.data.tags[f"rslad.replicates.{t}.best_val_pgd_acc"].startswith("mean 0.") for t in finalists)
    assert " vs " in parent.data.tags["rslad.replicate_verdicts"]

    uri = f"sqlite:///{db}"
    result = finalize(name, uri, top_k=2, device="cpu", columns=("clean", "pgd_trades"))
    assert len(result.replicates) == 4 and len(result.table) == 12 and "seed" in result.table.columns
    assert result.intervals["PGD_TRADES"].str.fullmatch(r"\d+\.\d-\d+\.\d").all()
    assert {c.trial_id for c in result.configurations} == finalists
    parent = c.get_run(parent.info.run_id)  # finalize's summaries: metrics on the parent
    assert all(parent.data.metrics[f"replicates/{t}/best_val_pgd_acc_n"] == 2 for t in finalists)
    text = build_report(name, uri, tmp_path / "report", log_artifacts=False).markdown.read_text()
    assert "## Is the winner distinguishable from the runner-up?" in text
    assert "**Test set, PGD_TRADES, best checkpoint (%)**" in text and "McNemar exact" in text
    assert text.count(" vs ") >= 3  # validation, test across seeds, and the McNemar lines per seed
