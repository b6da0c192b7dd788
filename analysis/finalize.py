"""Final test-set evaluation of a search's top-k trials (best and last checkpoint, every column, AutoAttack), written back to MLflow.

    python -m analysis.finalize name=<experiment> [top_k=3] [aa.n=1000] [select=best_val_pgd_acc]
                                [device=auto] [tracking.uri=sqlite:///<cwd>/mlruns.db]

Trials are ranked by the selection metric (default best_val_pgd_acc: the best validation PGD
accuracy of the run, the same number the search optimised); failed trials are not ranked.
Every (trial, checkpoint, column) result is logged as soon as it exists, so an interrupted run
continues where it stopped: a result is current when its metric's latest step equals the model
file's epoch and, for AutoAttack, when it was computed on the same number of test images.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch

from analysis.cli import UsageError, run_main
from analysis.runs import (
    CHECKPOINTS,
    COLUMN_TITLES,
    DEFAULT_SELECT,
    TEST_COLUMNS,
    client_for,
    find_parent_run,
    load_runs,
    rank_trials,
    selection_mode,
    result_key,
)

log = logging.getLogger(__name__)

AA = "autoattack"
AA_CUSTOM = "aa_custom"
WINNER_TAG = "rslad.final_winner"


@dataclass
class FinalizeResult:
    """What one finalize call did: the ranking it used, what it evaluated or found already done, the winner."""

    select: str
    mode: str
    top: list[str]
    evaluated: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    winner: str | None = None
    table: pd.DataFrame | None = None


def aa_column(result: Any) -> str:
    """'autoattack' only for a standard run of all four standard attacks; any subset is 'aa_custom'."""
    from trainables.attacks.autoattack import STANDARD_ATTACKS

    # Belt and braces: the adapter's flag and the attack list must both say "standard".
    if result.is_standard and set(STANDARD_ATTACKS) <= set(result.attacks_run):
        return AA
    return AA_CUSTOM


def expected_aa_column(aa_attacks: Sequence[str] | None) -> str:
    """The column an AutoAttack request will be logged under (before running it)."""
    from trainables.attacks.autoattack import STANDARD_ATTACKS

    return AA if aa_attacks is None or set(STANDARD_ATTACKS) <= set(aa_attacks) else AA_CUSTOM


def _aa_signature(n: int, aa_attacks: Sequence[str] | None) -> str:
    """Provenance of an AutoAttack result: n images and, for a subset, which attacks."""
    return str(n) if expected_aa_column(aa_attacks) == AA else f"n={n};attacks={','.join(aa_attacks or ())}"


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Disable TF32 matmuls/convolutions for the block: evaluation numbers are fp32 numbers."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _TestSets:
    """Test images per (dataset, data_dir), loaded once per finalize call."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from trainables.data import load_splits, to_float

        key = (cfg.dataset, cfg.data_dir, cfg.download)
        if key not in self._cache:
            splits = load_splits(cfg)
            self._cache[key] = (to_float(splits.test_x), splits.test_y)
        return self._cache[key]


class _Run:
    """One trial's MLflow run as the finalizer sees it: current tags/metrics and which results are up to date."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        run = client.get_run(run_id)
        self.metrics = dict(run.data.metrics)
        self.tags = dict(run.data.tags)

    def is_current(self, key: str, epoch: int, tag: str | None = None, tag_value: str | None = None) -> bool:
        """Whether `key` was logged for the model file of `epoch` (and, if given, with tag == tag_value)."""
        if key not in self.metrics:
            return False
        if tag is not None and self.tags.get(tag) != tag_value:
            return False
        history = self.client.get_metric_history(self.run_id, key)
        # MLflow's "latest" is the highest step, then the newest write: the same rule decides here.
        latest = max(history, key=lambda m: (m.step, m.timestamp))
        return latest.step == epoch

    def log(self, metrics: Mapping[str, float], step: int, tags: Mapping[str, str]) -> None:
        """Metrics and their provenance tags in ONE batch (one SQL transaction): never a value without its tags."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.metrics.update(metrics)
        self.tags.update({k: str(v) for k, v in tags.items()})


def _model_path(checkpoint_dir: str | None, checkpoint: str) -> Path | None:
    from trainables.checkpoints import BEST_MODEL_FILE, LAST_MODEL_FILE

    if not checkpoint_dir:
        return None
    return Path(checkpoint_dir) / {"best": BEST_MODEL_FILE, "last": LAST_MODEL_FILE}[checkpoint]


def _file_epoch(path: Path) -> int:
    """The epoch a model file was saved at (read without building the model)."""
    from trainables.checkpoints import load

    return int(load(path)["epoch"])


def finalize(
    name: str,
    tracking_uri: str,
    *,
    top_k: int = 3,
    aa_n: int = 1000,
    select: str = DEFAULT_SELECT,
    device: str = "auto",
    batch_size: int = 256,
    aa_attacks: Sequence[str] | None = None,
    columns: Sequence[str] = TEST_COLUMNS,
    seed: int = 0,
) -> FinalizeResult:
    """Evaluate best and last model files of the top_k trials by `select` on the test split; log test/<column>/<checkpoint>.

    AutoAttack runs on the first aa_n test images (standard version unless `aa_attacks` names a
    subset, which is logged as test/aa_custom/... and never as autoattack); the other columns use
    the whole test set. The parent run gets the winner's numbers and tag rslad.final_winner.
    """
    from trainables.runtime import resolve_device

    unknown = [c for c in columns if c not in TEST_COLUMNS]
    if unknown:
        raise UsageError(f"unknown column {unknown[0]!r}; allowed: {', '.join(TEST_COLUMNS)}")
    try:
        dev = resolve_device(device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from None
    client = client_for(tracking_uri)
    runs = load_runs(name, tracking_uri)
    parent = find_parent_run(name, tracking_uri)
    mode = selection_mode(select, parent.data.tags if parent else None)
    if runs.empty:
        raise UsageError(f"experiment {name!r} has no trial runs to finalize")
    if (runs["status"] == "running").any():
        log.warning("%d trial(s) are still running: their checkpoints may change after this evaluation",
                    int((runs["status"] == "running").sum()))
    ranked = rank_trials(runs, select, mode)
    top = ranked.head(top_k)
    result = FinalizeResult(select=select, mode=mode, top=list(top["trial_id"]))
    log.info("ranking %d trial(s) by %s (%s); top %d: %s", len(ranked), select, mode, len(top),
             ", ".join(f"{t} ({v:.4f})" for t, v in zip(top["trial_id"], top[select])))

    test_sets = _TestSets()
    aa_col = expected_aa_column(aa_attacks)
    plain = [c for c in columns if c != AA]
    with strict_fp32():
        # Two passes: every cheap column of every model first, AutoAttack (hours on CIFAR) last,
        # so an interruption during AutoAttack leaves a complete table of everything else.
        for pass_columns in (plain, [AA] if AA in columns else []):
            if not pass_columns:
                continue
            for _, row in top.iterrows():
                mrun = _Run(client, row["run_id"])
                for ckpt in CHECKPOINTS:
                    _evaluate_checkpoint(result, mrun, row, ckpt, pass_columns, test_sets, dev, aa_n, aa_attacks,
                                         aa_col, batch_size, seed)
    result.winner = _write_parent(client, parent, top) if len(top) else None
    result.table = final_table(load_runs(name, tracking_uri), result.top, select)
    return result


def _evaluate_checkpoint(result: FinalizeResult, mrun: _Run, row: pd.Series, ckpt: str, columns: Sequence[str],
                         test_sets: _TestSets, dev: torch.device, aa_n: int, aa_attacks: Sequence[str] | None,
                         aa_col: str, batch_size: int, seed: int) -> None:
    """Evaluate the columns of one model file that are not already current in MLflow."""
    from trainables.attacks.autoattack import autoattack
    from trainables.checkpoints import load_model
    from trainables.evaluate import evaluate

    trial = row["trial_id"]
    path = _model_path(row.get("checkpoint_dir"), ckpt)
    if path is None or not path.is_file():
        log.warning("trial %s: no %s model file (%s); skipped", trial, ckpt, path)
        result.missing.append((trial, ckpt))
        return
    epoch = _file_epoch(path)
    todo = []
    for col in columns:
        if col == AA:
            key, tag = result_key(aa_col, ckpt), f"test.{ckpt}.{aa_col}"
            # The signature needs the test-set size (aa_n may exceed it); the test.n tag spares loading the data.
            known_n = mrun.tags.get("test.n")
            if known_n and mrun.is_current(key, epoch, tag, _aa_signature(min(aa_n, int(known_n)), aa_attacks)):
                result.skipped.append((trial, ckpt, aa_col))
            else:
                todo.append((col, key, tag))
        elif mrun.is_current(result_key(col, ckpt), epoch):
            result.skipped.append((trial, ckpt, col))
        else:
            todo.append((col, result_key(col, ckpt), None))
    if not todo:
        return
    model = cfg = None
    for col, key, tag in todo:
        if model is None:
            model, cfg, _ = load_model(path, dev)
            model.float()
        images, labels = test_sets.get(cfg)
        start = time.perf_counter()
        if col == AA:
            n = min(aa_n, len(labels))
            signature = _aa_signature(n, aa_attacks)
            if mrun.is_current(key, epoch, tag, signature):
                result.skipped.append((trial, ckpt, aa_col))
                continue
            log.info("trial %s %s (epoch %d): AutoAttack %s on %d test images, eps=%.5f ...", trial, ckpt, epoch,
                     "standard" if aa_attacks is None else f"custom {list(aa_attacks)}", n, cfg.eps)
            res = autoattack(model, images[:n], labels[:n], eps=cfg.eps,
                             version="standard" if aa_attacks is None else "custom",
                             attacks=None if aa_attacks is None else list(aa_attacks),
                             batch_size=batch_size, seed=seed, device=dev)
            logged = aa_column(res)
            if logged != aa_col:
                raise RuntimeError(f"AutoAttack ran {res.attacks_run} ({res.version}); expected a {aa_col} result")
            # The contract's run-level tags describe test/autoattack/*; a subset gets its own test.aa_custom.* tags.
            names = ("test.aa_n", "test.aa_version", "test.aa_attacks") if logged == AA else (
                "test.aa_custom.n", "test.aa_custom.version", "test.aa_custom.attacks")
            tags = {tag: _aa_signature(res.n, aa_attacks), f"test.{ckpt}.epoch": epoch,
                    **dict(zip(names, (res.n, res.version, ",".join(res.attacks_run))))}
            mrun.log({key: res.robust_accuracy}, epoch, tags)
            result.evaluated.append((trial, ckpt, logged))
            value = res.robust_accuracy
        else:
            value = evaluate(model, images, labels, attacks=(col,), eps=cfg.eps, batch_size=batch_size, seed=seed,
                             device=dev)[col]
            mrun.log({key: value}, epoch, {"test.n": len(labels), "test.eps": cfg.eps, f"test.{ckpt}.epoch": epoch})
            result.evaluated.append((trial, ckpt, col))
        log.info("trial %s %s (epoch %d): %s = %.2f%% (%.1fs)", trial, ckpt, epoch, COLUMN_TITLES[logged if col == AA else col],
                 100 * value, time.perf_counter() - start)


def _write_parent(client: Any, parent: Any, top: pd.DataFrame) -> str | None:
    """Copy the winner's (rank 1 by the selection metric) test results to the parent run; returns its trial id."""
    from mlflow.entities import Metric, RunTag

    winner = top.iloc[0]
    if parent is None:
        log.warning("no parent run (tag rslad.role=search): winner %s is not recorded on a parent", winner["trial_id"])
        return str(winner["trial_id"])
    run = client.get_run(winner["run_id"])
    current = client.get_run(parent.info.run_id)
    now = int(time.time() * 1000)
    metrics = []
    for key, value in run.data.metrics.items():
        if not key.startswith("test/"):
            continue
        if current.data.metrics.get(key) == value and current.data.tags.get(WINNER_TAG) == winner["trial_id"]:
            continue  # unchanged: a resumed finalize does not grow the parent's history
        step = max(m.step for m in client.get_metric_history(run.info.run_id, key))
        metrics.append(Metric(key, value, now, step))
    tags = [RunTag(WINNER_TAG, str(winner["trial_id"])), RunTag("rslad.final_run_id", str(winner["run_id"]))]
    tags += [RunTag(k, v) for k, v in run.data.tags.items() if k.startswith("test.")]
    client.log_batch(parent.info.run_id, metrics=metrics, tags=tags)
    return str(winner["trial_id"])


def final_table(runs: pd.DataFrame, trial_ids: Sequence[str], select: str) -> pd.DataFrame:
    """The top-k trials' test results in percent (columns '<Column> best' / '<Column> last'), in rank order."""
    rows = []
    by_id = runs.set_index("trial_id")
    for rank, tid in enumerate(trial_ids, 1):
        r = by_id.loc[tid]
        row: dict[str, Any] = {"rank": rank, "trial": tid, f"{select} (%)": round(100 * float(r.get(select)), 2)}
        for ckpt in CHECKPOINTS:
            for col in (*TEST_COLUMNS, AA_CUSTOM):
                key = result_key(col, ckpt)
                if key in by_id.columns and pd.notna(r.get(key)):
                    row[f"{COLUMN_TITLES[col]} {ckpt}"] = round(100 * float(r[key]), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def main(args: Mapping[str, Any]) -> int:
    """The command: finalize, then print the final table."""
    result = finalize(args["name"], args["tracking.uri"], top_k=args["top_k"], aa_n=args["aa.n"],
                      select=args["select"], device=args["device"])
    log.info("evaluated %d result(s), %d already current, %d model file(s) missing; winner %s",
             len(result.evaluated), len(result.skipped), len(result.missing), result.winner)
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(f"Final evaluation (test set, %) of the top {len(result.top)} by {result.select} ({result.mode}):")
        print(result.table.to_string(index=False))
    return 0


ALLOWED_KEYS = ("name", "top_k", "aa.n", "select", "device", "tracking.uri")


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m analysis.finalize key=value ...`."""
    return run_main(main, argv, ALLOWED_KEYS)


if __name__ == "__main__":
    raise SystemExit(cli())
