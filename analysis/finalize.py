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
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.options import run_command
from analysis.runs import (
    CI_HIGH,
    CI_LOW,
    PER_IMAGE,
    CHECKPOINTS,
    DEFAULT_SELECT,
    client_for,
    find_parent_run,
    load_runs,
    rank_trials,
    replicate_configurations,
    replicates_of,
    result_key,
    selection_mode,
    test_images,
)
from analysis.uncertainty import REPLICATE_HEADERS, Configuration, accuracy_interval, replicate_rows, text_table
from trainables.attacks.autoattack import (
    PYAUTOATTACK_LOGGER,
    STANDARD_ATTACKS,
    autoattack,
)
from trainables.files import local_file
from trainables.shipping import node_cache
from trainables.checkpoints import BEST_MODEL_FILE, LAST_MODEL_FILE, load, load_model
from trainables.config import TrainConfig
from trainables.data import load_splits, to_float
from trainables.errors import UserError
from trainables.evaluate import per_image_correct
from trainables.runtime import resolve_device
from trainables.schema import COLUMN_TITLES, EVAL_COLUMNS

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
    copied: list[tuple[str, str, str]] = field(default_factory=list)
    """Results logged from the other checkpoint of the same model file, without evaluating again."""
    shared: list[str] = field(default_factory=list)
    """Trials whose best and last model files are the same (evaluated once, logged under both)."""
    winner: str | None = None
    table: pd.DataFrame | None = None
    replicates: list[str] = field(default_factory=list)
    """The finalists' replicates (python -m search.replicate) evaluated with them, finalist by finalist."""
    intervals: pd.DataFrame | None = None
    """The 95 % Wilson interval of each cell of `table` (final_intervals)."""
    configurations: list[Configuration] = field(default_factory=list)
    """The replicated finalists, on the headline column's best checkpoint (HEADLINE)."""


def aa_column(result: Any) -> str:
    """'autoattack' only for a standard run of all four standard attacks; any subset is 'aa_custom'."""
    # Belt and braces: the adapter's flag and the attack list must both say "standard".
    if result.is_standard and set(STANDARD_ATTACKS) <= set(result.attacks_run):
        return AA
    return AA_CUSTOM


def expected_aa_column(aa_attacks: Sequence[str] | None) -> str:
    """The column an AutoAttack request will be logged under (before running it)."""
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
    """The local model file of a checkpoint folder (a folder in object storage is downloaded from once)."""
    if not checkpoint_dir:
        return None
    name = {"best": BEST_MODEL_FILE, "last": LAST_MODEL_FILE}[checkpoint]
    return local_file(f"{checkpoint_dir.rstrip('/')}/{name}", node_cache() / "downloads")


def same_weights(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two model files (loaded blobs) hold the same epoch and bit-identical weights."""
    if a["epoch"] != b["epoch"] or a["model"].keys() != b["model"].keys():
        return False
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@dataclass
class _Model:
    """One model file to evaluate: a trial's best or last checkpoint, or both when they hold the same weights."""

    trial: str
    rank: int
    run: _Run
    checkpoints: tuple[str, ...]
    path: Path
    epoch: int
    test_n: int

    @property
    def label(self) -> str:
        return f"trial {self.trial} (rank {self.rank}) {'+'.join(self.checkpoints)} (epoch {self.epoch})"


@dataclass
class _Job:
    """One evaluation to run: a column of a model, logged under each of its checkpoints."""

    model: _Model
    column: str


def _plan_models(result: FinalizeResult, client: Any, rows: Sequence[tuple[int, pd.Series]],
                 test_sets: _TestSets) -> list[_Model]:
    """The model files of (rank, run row) pairs, in order; a best and last of the same epoch and weights count once."""
    models = []
    for rank, row in rows:
        trial, mrun = row["trial_id"], _Run(client, row["run_id"])
        blobs = {}
        for ckpt in CHECKPOINTS:
            path = _model_path(row.get("checkpoint_dir"), ckpt)
            if path is None or not path.is_file():
                log.warning("trial %s: no %s model file (%s); skipped", trial, ckpt, path)
                result.missing.append((trial, ckpt))
            else:
                blobs[ckpt] = (path, load(path))
        if not blobs:
            continue
        # The size of the test set (AutoAttack's provenance needs it): the test.n tag spares loading the data.
        first = next(iter(blobs.values()))[1]
        test_n = int(mrun.tags.get("test.n") or len(test_sets.get(TrainConfig.from_dict(first["config"]))[1]))
        if len(blobs) == 2 and same_weights(blobs["best"][1], blobs["last"][1]):
            groups = [("best", "last")]
            result.shared.append(trial)
            log.info("trial %s: best and last model files are the same (epoch %d): evaluated once, logged as both",
                     trial, blobs["best"][1]["epoch"])
        else:
            groups = [(ckpt,) for ckpt in blobs]
        for group in groups:
            path, blob = blobs[group[0]]
            models.append(_Model(trial, rank, mrun, group, path, int(blob["epoch"]), test_n))
    return models


def _status(model: _Model, column: str, aa_n: int, aa_attacks: Sequence[str] | None, aa_col: str) -> dict[str, bool]:
    """checkpoint -> whether its result for `column` is current (logged for this model file and, for AA, this n)."""
    if column == AA:
        signature = _aa_signature(min(aa_n, model.test_n), aa_attacks)
        return {ck: model.run.is_current(result_key(aa_col, ck), model.epoch, f"test.{ck}.{aa_col}", signature)
                for ck in model.checkpoints}
    return {ck: model.run.is_current(result_key(column, ck), model.epoch) for ck in model.checkpoints}


def _copy_result(model: _Model, column: str, src: str, dst: list[str], aa_col: str) -> None:
    """Log a current result of one checkpoint under the others of the same model file (no evaluation)."""
    logged = aa_col if column == AA else column
    metrics = {}
    for suffix in ("", CI_LOW, CI_HIGH):
        value = model.run.metrics.get(result_key(logged, src) + suffix)
        if value is not None:
            metrics.update({result_key(logged, ck) + suffix: value for ck in dst})
    tags: dict[str, Any] = {f"test.{ck}.epoch": model.epoch for ck in dst}
    if column == AA:
        tags.update({f"test.{ck}.{aa_col}": model.run.tags[f"test.{src}.{aa_col}"] for ck in dst})
    model.run.log(metrics, model.epoch, tags)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Progress:
    """'[k/N]' lines with elapsed time and an ETA from the mean duration of each column so far."""

    def __init__(self, jobs: Sequence[_Job]) -> None:
        self.jobs = list(jobs)
        self.start = time.perf_counter()
        self.durations: dict[str, list[float]] = {}

    def eta(self, done: int) -> str:
        rest = self.jobs[done:]
        if not rest:
            return "0:00"
        if any(j.column not in self.durations for j in rest):
            return "?"  # a column not timed yet (AutoAttack's first model decides most of it)
        mean = {c: sum(d) / len(d) for c, d in self.durations.items()}
        return "~" + _clock(sum(mean[j.column] for j in rest))

    def done(self, k: int, job: _Job, seconds: float) -> str:
        self.durations.setdefault(job.column, []).append(seconds)
        return f"{_clock(time.perf_counter() - self.start)} elapsed, ETA {self.eta(k)}"


class _AutoAttackProgress(logging.Handler):
    """Turns pyautoattack's debug messages (its `auto-attack` logger) into progress lines per sub-attack and batch."""

    PATTERNS = (
        (re.compile(r"^initial accuracy: ([\d.]+)%"), "clean accuracy {0}%"),
        (re.compile(r"^running (\S+)"), "{0} ..."),
        (re.compile(r"^(\S+) - (\d+)/(\d+) - (\d+) out of (\d+) successfully perturbed"),
         "{0} batch {1}/{2}: {3} of {4} broken"),
        (re.compile(r"^robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)"),
         "after {0}: robust accuracy {1}% ({2} s)"),
        (re.compile(r"^no robust datapoints left"), "no robust images left: the remaining attacks are skipped"),
    )

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for pattern, text in self.PATTERNS:
            match = pattern.match(message)
            if match:
                log.info("%s AutoAttack %s", self.prefix, text.format(*match.groups()))
                return
        if record.levelno >= logging.INFO:  # the package's own notices and warnings are passed on, not swallowed
            log.log(record.levelno, "%s AutoAttack: %s", self.prefix, message)


@contextlib.contextmanager
def autoattack_progress(prefix: str) -> Iterator[None]:
    """Route the `auto-attack` logger's debug messages through _AutoAttackProgress for the block."""
    logger = logging.getLogger(PYAUTOATTACK_LOGGER)
    saved = (logger.level, logger.propagate)
    handler = _AutoAttackProgress(prefix)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its raw debug lines would otherwise reach a root handler set to DEBUG
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


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
    columns: Sequence[str] = EVAL_COLUMNS,
    seed: int = 0,
) -> FinalizeResult:
    """Evaluate best and last model files of the top_k trials by `select` on the test split; log test/<column>/<checkpoint>.

    AutoAttack runs on the first aa_n test images (standard version unless `aa_attacks` names a
    subset, which is logged as test/aa_custom/... and never as autoattack); the other columns use
    the whole test set. A trial whose best and last model files hold the same weights (its best
    epoch was its last) is evaluated once and logged under both. Each result is logged as soon as
    it exists, with a '[k/N]' progress line. The parent run gets the winner's numbers and tag
    rslad.final_winner.
    """
    unknown = [c for c in columns if c not in EVAL_COLUMNS]
    if unknown:
        raise UserError(f"unknown column {unknown[0]!r}; allowed: {', '.join(EVAL_COLUMNS)}")
    try:
        dev = resolve_device(device)
    except (RuntimeError, ValueError) as err:
        raise UserError(str(err)) from None
    client = client_for(tracking_uri)
    runs = load_runs(name, tracking_uri)
    parent = find_parent_run(name, tracking_uri)
    mode = selection_mode(select, parent.data.tags if parent else None)
    if runs.empty:
        raise UserError(f"experiment {name!r} has no trial runs to finalize")
    unfinished = runs["status"].isin(["running", "interrupted"])
    if unfinished.any():
        # An interrupted search resumes these trials: their checkpoints may change after this evaluation.
        log.warning("%d trial(s) are running or interrupted (resume the search to finish them): their checkpoints "
                    "may change after this evaluation", int(unfinished.sum()))
    ranked = rank_trials(runs, select, mode)
    top = ranked.head(top_k)
    result = FinalizeResult(select=select, mode=mode, top=list(top["trial_id"]))
    log.info("ranking %d trial(s) by %s (%s); top %d: %s", len(ranked), select, mode, len(top),
             ", ".join(f"{t} ({v:.4f})" for t, v in zip(top["trial_id"], top[select])))
    reps = replicates_of(runs, result.top)
    result.replicates = list(reps["trial_id"])
    if len(reps):
        log.info("and their %d replicate(s) (python -m search.replicate)", len(reps))
    ranks = {tid: rank for rank, tid in enumerate(result.top, 1)}
    rows = [(rank, row) for rank, (_, row) in enumerate(top.iterrows(), 1)]
    rows += [(ranks[row["replicate_of"]], row) for _, row in reps.iterrows()]

    test_sets = _TestSets()
    aa_col = expected_aa_column(aa_attacks)
    models = _plan_models(result, client, rows, test_sets)
    jobs = []
    # Two passes: every cheap column of every model first, AutoAttack (hours on CIFAR) last,
    # so an interruption during AutoAttack leaves a complete table of everything else.
    for pass_columns in ([c for c in columns if c != AA], [AA] if AA in columns else []):
        for model in models:
            for col in pass_columns:
                logged = aa_col if col == AA else col
                current = _status(model, col, aa_n, aa_attacks, aa_col)
                stale = [ck for ck, ok in current.items() if not ok]
                result.skipped += [(model.trial, ck, logged) for ck, ok in current.items() if ok]
                if stale and len(stale) < len(current):
                    _copy_result(model, col, next(ck for ck, ok in current.items() if ok), stale, aa_col)
                    result.copied += [(model.trial, ck, logged) for ck in stale]
                elif stale:
                    jobs.append(_Job(model, col))
    if jobs:
        log.info("%d evaluation(s) to run on %s: %d model file(s) of %d trial(s); %d result(s) already current",
                 len(jobs), dev, len({id(j.model) for j in jobs}), len({j.model.trial for j in jobs}),
                 len(result.skipped))
    with strict_fp32():
        _run_jobs(result, jobs, test_sets, dev, aa_n, aa_attacks, aa_col, batch_size, seed)
    result.winner = _write_parent(client, parent, top) if len(top) else None
    finished = load_runs(name, tracking_uri)
    order = final_order(finished, result.top)
    result.table = final_table(finished, order, select)
    result.intervals = final_intervals(finished, order)
    result.configurations = replicate_configurations(finished, result.top, result_key(HEADLINE, "best"))
    if parent is not None and result.replicates:
        _write_replicate_summaries(client, parent.info.run_id, finished, result.top, select)
    return result


def _run_jobs(result: FinalizeResult, jobs: Sequence[_Job], test_sets: _TestSets, dev: torch.device, aa_n: int,
              aa_attacks: Sequence[str] | None, aa_col: str, batch_size: int, seed: int) -> None:
    """Run the evaluations in order, logging each result (under every checkpoint of its model file) as it exists."""
    progress = _Progress(jobs)
    loaded: tuple[Path | None, Any, Any] = (None, None, None)
    for k, job in enumerate(jobs, 1):
        model_info = job.model
        if loaded[0] != model_info.path:
            net, cfg, _ = load_model(model_info.path, dev)
            loaded = (model_info.path, net.float(), cfg)
        _, net, cfg = loaded
        images, labels = test_sets.get(cfg)
        prefix = f"[{k}/{len(jobs)}]"
        start = time.perf_counter()
        epoch_tags = {f"test.{ck}.epoch": model_info.epoch for ck in model_info.checkpoints}
        if job.column == AA:
            n = min(aa_n, len(labels))
            log.info("%s %s: AutoAttack %s on %d test images, eps=%.5f ...", prefix, model_info.label,
                     "standard" if aa_attacks is None else f"custom {list(aa_attacks)}", n, cfg.eps)
            with autoattack_progress(prefix):
                res = autoattack(net, images[:n], labels[:n], eps=cfg.eps,
                                 version="standard" if aa_attacks is None else "custom",
                                 attacks=None if aa_attacks is None else list(aa_attacks),
                                 batch_size=batch_size, seed=seed, device=dev)
            logged = aa_column(res)
            if logged != aa_col:
                raise RuntimeError(f"AutoAttack ran {res.attacks_run} ({res.version}); expected a {aa_col} result")
            # The contract's run-level tags describe test/autoattack/*; a subset gets its own test.aa_custom.* tags.
            names = ("test.aa_n", "test.aa_version", "test.aa_attacks") if logged == AA else (
                "test.aa_custom.n", "test.aa_custom.version", "test.aa_custom.attacks")
            tags = {**{f"test.{ck}.{aa_col}": _aa_signature(res.n, aa_attacks) for ck in model_info.checkpoints},
                    **epoch_tags, **dict(zip(names, (res.n, res.version, ",".join(res.attacks_run))))}
            value, n = res.robust_accuracy, res.n
        else:
            log.info("%s %s: %s on %d test images ...", prefix, model_info.label, COLUMN_TITLES[job.column],
                     len(labels))
            logged = job.column
            correct = per_image_correct(net, images, labels, (job.column,), eps=cfg.eps, batch_size=batch_size,
                                        seed=seed, device=dev)[job.column]
            _log_per_image(model_info, job.column, correct)  # before the metric: a current result has its file
            value, n = int(correct.sum()) / len(correct), len(correct)
            tags = {"test.n": len(labels), "test.eps": cfg.eps, **epoch_tags}
        model_info.run.log(_with_interval({result_key(logged, ck): value for ck in model_info.checkpoints}, n),
                           model_info.epoch, tags)
        result.evaluated += [(model_info.trial, ck, logged) for ck in model_info.checkpoints]
        seconds = time.perf_counter() - start
        log.info("%s %s: %s = %.2f%% (%.1fs; %s)", prefix, model_info.label, COLUMN_TITLES[logged], 100 * value,
                 seconds, progress.done(k, job, seconds))


def _with_interval(results: Mapping[str, float], n: int) -> dict[str, float]:
    """Each test/<column>/<checkpoint> result with its 95 % Wilson interval from the n images it was measured on."""
    out = dict(results)
    for key, value in results.items():
        interval = accuracy_interval(value, n)
        out.update({f"{key}{CI_LOW}": interval.low, f"{key}{CI_HIGH}": interval.high})
    return out


def _log_per_image(model: _Model, column: str, correct: torch.Tensor) -> None:
    """per_image/<checkpoint>/<column>.npz on the run: which test images the model got right (packed bits), so that
    analysis.report can compare two models on the same images (McNemar)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{column}.npz"
        np.savez_compressed(path, correct=np.packbits(correct.numpy()), n=len(correct), epoch=model.epoch)
        for ck in model.checkpoints:
            model.run.client.log_artifact(model.run.run_id, str(path), f"{PER_IMAGE}/{ck}")


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


# Column titles of the printed table: short enough for every column to fit 100 characters.
TABLE_TITLES = {**COLUMN_TITLES, AA_CUSTOM: "AA_subset"}  # one word: the table is whitespace-aligned


def final_order(runs: pd.DataFrame, finalists: Sequence[str]) -> list[str]:
    """The rows of the final tables: each finalist, then its replicates by seed."""
    reps = replicates_of(runs, finalists)
    return [t for tid in finalists for t in [tid, *reps.loc[reps["replicate_of"] == tid, "trial_id"]]]


def _ranks(by_id: pd.DataFrame, trial_ids: Sequence[str]) -> dict[str, Any]:
    """Trial id -> rank: the search's trials 1, 2, ... in order; a replicate has its finalist's rank ('-' without)."""
    of = {tid: by_id.loc[tid].get("replicate_of") for tid in trial_ids}
    finalists = [tid for tid in trial_ids if not isinstance(of[tid], str)]
    ranks: dict[str, Any] = {tid: rank for rank, tid in enumerate(finalists, 1)}
    return {tid: ranks.get(tid, ranks.get(of[tid], "-")) for tid in trial_ids}


def final_table(runs: pd.DataFrame, trial_ids: Sequence[str], select: str) -> pd.DataFrame:
    """The top trials' test results in percent, one row per (trial, checkpoint) in rank order.

    Columns: rank, trial, seed (train.seed; only when replicates are among the trials, each with its finalist's
    rank), ckpt (best | last), epoch (of the model file), select (the selection metric, %), then one column per test
    column that has a result (TABLE_TITLES).
    """
    rows = []
    by_id = runs.set_index("trial_id")
    ranks = _ranks(by_id, trial_ids)
    replicated = any(isinstance(by_id.loc[tid].get("replicate_of"), str) for tid in trial_ids)
    for tid in trial_ids:
        r = by_id.loc[tid]
        for ckpt in CHECKPOINTS:
            epoch = r.get(f"test.{ckpt}.epoch")
            row: dict[str, Any] = {"rank": ranks[tid], "trial": tid}
            if replicated:
                row["seed"] = int(r["seed"]) if pd.notna(r.get("seed")) else pd.NA
            row.update({"ckpt": ckpt, "epoch": int(epoch) if pd.notna(epoch) else pd.NA,
                        "select": round(100 * float(r.get(select)), 2)})
            for col in (*EVAL_COLUMNS, AA_CUSTOM):
                key = result_key(col, ckpt)
                if key in by_id.columns and pd.notna(r.get(key)):
                    row[TABLE_TITLES[col]] = round(100 * float(r[key]), 2)
            rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The final table as text (a missing result shows as '-')."""
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}")


def final_intervals(runs: pd.DataFrame, trial_ids: Sequence[str]) -> pd.DataFrame:
    """The 95 % Wilson interval of each test result of final_table, in %, as 'low-high' (from the number of images
    each column was measured on)."""
    rows = []
    by_id = runs.set_index("trial_id")
    ranks = _ranks(by_id, trial_ids)
    for tid in trial_ids:
        r = by_id.loc[tid]
        for ckpt in CHECKPOINTS:
            row: dict[str, Any] = {"rank": ranks[tid], "trial": tid, "ckpt": ckpt}
            for col in (*EVAL_COLUMNS, AA_CUSTOM):
                value, n = r.get(result_key(col, ckpt)), test_images(r, col)
                if value is not None and pd.notna(value) and n:
                    interval = accuracy_interval(float(value), n)
                    row[TABLE_TITLES[col]] = f"{100 * interval.low:.1f}-{100 * interval.high:.1f}"
            rows.append(row)
    return pd.DataFrame(rows)


def _interval_note(runs: pd.DataFrame, trial_ids: Sequence[str]) -> str:
    """'n = 359 test images, AutoAttack on the first 100': what the intervals rest on."""
    by_id = runs.set_index("trial_id")
    sizes = {col: sorted({n for tid in trial_ids if (n := test_images(by_id.loc[tid], col))})
             for col in ("clean", AA, AA_CUSTOM)}
    parts = [f"n = {'/'.join(map(str, sizes['clean']))} test images"] if sizes["clean"] else []
    parts += [f"{TABLE_TITLES[c]} on the first {'/'.join(map(str, sizes[c]))}" for c in (AA, AA_CUSTOM) if sizes[c]]
    return ", ".join(parts)


# The evaluation column the replicates' summary and the report's verdict lead with (the supplement's PGD^TRADES).
HEADLINE = "pgd_trades"


def replicate_summaries(runs: pd.DataFrame, finalists: Sequence[str], select: str) -> list[list[str]]:
    """Rows of the replicates' table: per finalist and column (the selection metric, then each test column on the
    best checkpoint), the search's own run and the replicates' n, mean, sd and 95 % t interval (%)."""
    rows = []
    for key, title in [(select, "select"), *((result_key(c, "best"), TABLE_TITLES[c])
                                             for c in (*EVAL_COLUMNS, AA_CUSTOM))]:
        if key not in runs.columns:
            continue
        for cells in replicate_rows(replicate_configurations(runs, finalists, key)):
            if cells[3] != "0":
                rows.append([cells[0], cells[1], title, *cells[2:7]])
    return sorted(rows, key=lambda r: int(r[0]))


REPLICATE_TABLE_HEADERS = ("rank", "configuration", "column", *REPLICATE_HEADERS[2:7])


def _write_replicate_summaries(client: Any, parent_id: str, runs: pd.DataFrame, finalists: Sequence[str],
                               select: str) -> None:
    """replicates/<trial>/<key>_{mean,sd,n,ci_low,ci_high} on the parent run, for the selection metric and each test
    result of the best and last checkpoints."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    keys = [select, *(result_key(c, ck) for c in (*EVAL_COLUMNS, AA_CUSTOM) for ck in CHECKPOINTS)]
    metrics = []
    for key in (k for k in keys if k in runs.columns):
        for config in replicate_configurations(runs, finalists, key):
            s = config.summary
            if s is None:
                continue
            numbers = {"mean": s.mean, "sd": s.sd, "n": s.n, "ci_low": s.low, "ci_high": s.high}
            metrics += [Metric(f"replicates/{config.trial_id}/{key}_{k}", float(v), now, 0)
                        for k, v in numbers.items() if not math.isnan(v)]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(parent_id, metrics=metrics[i:i + 1000])


def main(args: Mapping[str, Any]) -> int:
    """The command: finalize, then print the final table."""
    result = finalize(args["name"], args["tracking.uri"], top_k=args["top_k"], aa_n=args["aa.n"],
                      select=args["select"], device=args["device"])
    log.info("evaluated %d result(s), %d already current, %d copied from the identical checkpoint, "
             "%d model file(s) missing; winner %s", len(result.evaluated), len(result.skipped), len(result.copied),
             len(result.missing), result.winner)
    reps = f" and their {len(result.replicates)} replicates (seed = train.seed)" if result.replicates else ""
    print(f"Test-set accuracy (%) of the top {len(result.top)} by {result.select}{reps} ({result.mode}; "
          f"'select' is its value in %):")
    print(format_table(result.table))
    runs = load_runs(args["name"], args["tracking.uri"])
    order = final_order(runs, result.top)
    print(f"\n95 % Wilson interval of each result (%, low-high; {_interval_note(runs, order)}):")
    print(result.intervals.to_string(index=False, na_rep="-"))
    if result.replicates:
        print(f"\nReplicated configurations (%, best checkpoint; select = {result.select}): the search's own run "
              "with its 95 % Wilson interval, then the replicates' n, mean, sd and 95 % t interval (the search's run "
              "is not among them):")
        print(text_table(REPLICATE_TABLE_HEADERS, replicate_summaries(runs, result.top, result.select),
                         right=(0, 4, 5, 6)))
    if result.shared:
        print(f"best = last (one model file, evaluated once) for: {', '.join(result.shared)}")
    return 0


ALLOWED_KEYS = ("name", "top_k", "aa.n", "select", "device", "tracking.uri")


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m analysis.finalize key=value ...`."""
    return run_command(main, argv, ALLOWED_KEYS)


if __name__ == "__main__":
    raise SystemExit(cli())
