"""The live console of a search: a compact table of running and recent trials, done/total, elapsed and ETA.

`LiveConsole` is a Tune callback; what it prints is `render(snapshot)`, a pure function of a
`Snapshot` built from Tune's `trials` list (which after a resume holds the restored trials with
their last results), so the counts continue across a resume. On a terminal the block is redrawn
in place at most every `tty_every_s` seconds; elsewhere (CI logs, `ray job logs`) a new block is
appended at most every `log_every_s` seconds, and only when something changed. What a person
must not miss goes through logging (logger "search", on stderr) as it happens: a trial that
failed, and a trial that continued from an older checkpoint than its newest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TextIO

from ray.tune import Callback

from search.tracking import (
    error_summary,
    searched_values,
    short_value,
    trial_state,
    trial_status,
)
from trainables.schema import FAILED, RESTORE_WARNING

log = logging.getLogger("search")

WIDTH = 100
# Loggers with their own handlers: the root (the driver's logging) and Ray's (it does not propagate).
LOGGERS_WITH_HANDLERS = ("", "ray")
ENDED = ("finished", "stopped_early", "failed")


@dataclass(frozen=True)
class TrialRow:
    """One trial as the console shows it."""

    trial_id: str
    params: dict[str, Any]
    epoch: int
    epochs: int
    metric: float | None
    best: float | None
    status: str
    """running, pending, how it ended (finished, stopped_early, failed: search.tracking.trial_status), or
    interrupted (still running when the driver was stopped; a resume continues it)."""
    ended_at: float = 0.0
    """Time of its last result (orders the recently ended trials)."""


@dataclass(frozen=True)
class Snapshot:
    """What the console knows at one moment."""

    name: str
    metric: str
    total: int
    rows: tuple[TrialRow, ...]
    elapsed_s: float
    eta_s: float | None = None
    eta_is_bound: bool = False
    """True when the ETA assumes every trial runs its whole schedule (no ASHA estimate given)."""

    def count(self, *statuses: str) -> int:
        """Trials in any of `statuses`."""
        return sum(r.status in statuses for r in self.rows)

    @property
    def best(self) -> TrialRow | None:
        """The trial with the highest best metric (failed trials excluded)."""
        scored = [r for r in self.rows if r.best is not None and math.isfinite(r.best) and r.status != "failed"]
        return max(scored, key=lambda r: r.best, default=None)


def row_of(trial: Any, metric: str) -> TrialRow:
    """A Tune Trial (or anything with trial_id, status, config, last_result) as a row."""
    last = trial.last_result or {}
    config = trial.config or {}
    return TrialRow(
        trial_id=str(trial.trial_id),
        params=searched_values(config),
        epoch=int(last.get("epoch", 0) or 0),
        epochs=int(config.get("train", {}).get("epochs", 0) or 0),
        metric=_number(last.get(metric)),
        best=_number(last.get(f"best_{metric}")),
        status=trial_state(trial),
        ended_at=float(last.get("timestamp", 0) or 0))


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def eta_seconds(rows: Iterable[TrialRow], total: int, epochs_per_s: float, *,
                planned_trial_epochs: int | None = None) -> tuple[float | None, bool]:
    """Seconds left at `epochs_per_s` trial-epochs per second, and whether it is an upper bound.

    With `planned_trial_epochs` (the expected trial-epochs of the whole search under ASHA) the
    remaining work is that plan minus what ran (at least what running trials still have to do);
    without it, every running and not yet started trial is assumed to run its whole schedule.
    """
    rows = list(rows)
    if epochs_per_s <= 0:
        return None, False
    live = [r for r in rows if r.status in ("running", "pending", "interrupted")]
    if not live and len(rows) >= total:
        return 0.0, False
    in_flight = sum(max(r.epochs - r.epoch, 0) for r in live)
    unstarted = max(total - len(rows), 0) * max((r.epochs for r in rows), default=0)
    if planned_trial_epochs is not None:
        remaining = max(planned_trial_epochs - sum(r.epoch for r in rows), in_flight)
        return remaining / epochs_per_s, False
    return (in_flight + unstarted) / epochs_per_s, True


def clock(seconds: float | None) -> str:
    """12:03, 1:02:03, or '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"


def _score(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _summary(snap: Snapshot, labels: tuple[str, ...], clock_label: str) -> str:
    """'5/8 done (2 finished, 3 stopped early), 2 running | elapsed 3:12, ETA 1:40'; zero counts are left out."""
    ended = [f"{n} {label}" for n, label in zip((snap.count(s) for s in ENDED), labels) if n]
    live = [f"{snap.count('running')} {labels[3]}"]
    if snap.count("interrupted"):
        live.append(f"{snap.count('interrupted')} {labels[4]}")
    bound = "<=" if snap.eta_is_bound and snap.eta_s else ""
    return (f"{snap.count(*ENDED)}/{snap.total} done" + (f" ({', '.join(ended)})" if ended else "")
            + f", {', '.join(live)} | {clock_label}{clock(snap.elapsed_s)}, ETA {bound}{clock(snap.eta_s)}")


def render(snap: Snapshot, width: int = WIDTH, max_rows: int = 12) -> str:
    """The console block: a summary line, the best trial, then running trials and the most recently ended ones."""
    long = _summary(snap, ("finished", "stopped early", "failed", "running", "interrupted"), "elapsed ")
    counts = long if len(long) + 10 <= width else _summary(snap, ("fin", "stop", "fail", "run", "cut"), "")
    # The counts and clocks always show; a long search name gives way.
    lines = [_fit(snap.name, max(width - len(counts) - 2, 8)) + ": " + counts]
    best = snap.best
    if best is not None:
        params = " ".join(f"{k}={short_value(v)}" for k, v in sorted(best.params.items()))
        lines.append(_fit(f"best {snap.metric} {best.best:.4f}: trial {best.trial_id} {params}", width))
    running = sorted((r for r in snap.rows if r.status in ("running", "interrupted")), key=lambda r: r.trial_id)
    ended = sorted((r for r in snap.rows if r.status in ENDED), key=lambda r: r.ended_at, reverse=True)
    shown = running[:max_rows] + ended[:max(max_rows - len(running), 0)]
    if not shown:
        return "\n".join(lines)
    metric = _fit(snap.metric, 11)
    id_w = max(8, max(len(r.trial_id) for r in shown))
    fixed = id_w + 2 + 2 + 7 + 2 + 11 + 2 + 6 + 2 + 13  # trial, params gap, epoch, metric, best, status
    params_w = max(width - fixed, 10)
    lines.append(f"{'trial':<{id_w}}  {'params':<{params_w}}  {'epoch':>7}  {metric:>11}  {'best':>6}  {'status':<13}")
    for r in shown:
        params = _fit(" ".join(f"{k}={short_value(v)}" for k, v in sorted(r.params.items())) or "-", params_w)
        epoch = f"{r.epoch}/{r.epochs}" if r.epochs else str(r.epoch)
        lines.append(f"{r.trial_id:<{id_w}}  {params:<{params_w}}  {epoch:>7}  {_score(r.metric):>11}  "
                     f"{_score(r.best):>6}  {r.status:<13}".rstrip())
    hidden = len(running) + len(ended) - len(shown)
    if hidden > 0:
        lines.append(f"... {hidden} more")
    return "\n".join(line[:width].rstrip() for line in lines)


@dataclass
class _Session:
    """What the console counts in this driver process (not pickled: a resume starts a new session)."""

    started: float = field(default_factory=time.monotonic)
    epochs: int = 0
    last_draw: float = -math.inf
    drawn_lines: int = 0
    last_text: str = ""
    live: set = field(default_factory=set)
    """Trials seen starting or reporting in this session."""
    ended: set = field(default_factory=set)
    """Trials Tune reported complete or failed in this session."""
    log_handler: Any = None
    """The _ClearBeforeLog handler installed on a terminal (removed at the experiment's end)."""


class LiveConsole(Callback):
    """Tune callback that draws the console: in place on a terminal, as appended blocks in a log."""

    def __init__(self, name: str, metric: str, total: int | None = None, *, planned_trial_epochs: int | None = None,
                 tty_every_s: float = 2.0, log_every_s: float = 30.0, stream: TextIO | None = None,
                 tty: bool | None = None, max_rows: int = 12) -> None:
        self.name = name
        self.metric = metric
        self.total = total
        self.planned_trial_epochs = planned_trial_epochs
        self.tty_every_s = tty_every_s
        self.log_every_s = log_every_s
        self.max_rows = max_rows
        self._stream = stream
        self._tty = tty
        self._active_before = 0.0  # seconds this search ran in earlier sessions (restored by set_state)
        self._session = _Session()

    # --- state Tune keeps with each experiment snapshot ----------------------------------------
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stream": None, "_session": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._session = _Session()

    def get_state(self) -> dict:
        """Active time so far, so that elapsed continues across a resume."""
        return {"active_s": self.elapsed_s()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore the active time of earlier sessions."""
        self._active_before = float(state.get("active_s", 0.0))

    # --- what is drawn -------------------------------------------------------------------------
    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def is_tty(self) -> bool:
        if self._tty is None:
            isatty = getattr(self.stream, "isatty", None)
            return bool(isatty and isatty())
        return self._tty

    def elapsed_s(self) -> float:
        """Seconds this search has been running, over all its sessions."""
        return self._active_before + time.monotonic() - self._session.started

    def snapshot(self, trials: Iterable[Any], at_end: bool = False) -> Snapshot:
        """The console's view of Tune's trials list now (at_end: the experiment is over)."""
        rows = tuple(row_of(t, self.metric) for t in trials)
        if at_end:
            # Tune marks the trials it stops when the driver is interrupted TERMINATED without telling
            # callbacks they completed: those are interrupted (a resume continues them), not ended.
            rows = tuple(dataclasses.replace(r, status="interrupted")
                         if r.trial_id in self._session.live and r.trial_id not in self._session.ended
                         and r.status in ("finished", "stopped_early") else r for r in rows)
        total = max(self.total or 0, len(rows))
        session_s = time.monotonic() - self._session.started
        rate = self._session.epochs / session_s if session_s > 0 else 0.0
        eta, bound = eta_seconds(rows, total, rate, planned_trial_epochs=self.planned_trial_epochs)
        return Snapshot(name=self.name, metric=self.metric, total=total, rows=rows, elapsed_s=self.elapsed_s(),
                        eta_s=eta, eta_is_bound=bound)

    def draw(self, trials: Iterable[Any], force: bool = False, at_end: bool = False) -> None:
        """Render and write the block if the refresh interval has passed (or `force`)."""
        now = time.monotonic()
        every = self.tty_every_s if self.is_tty else self.log_every_s
        if not force and now - self._session.last_draw < every:
            return
        width = min(shutil.get_terminal_size((WIDTH, 24)).columns, WIDTH) if self.is_tty else WIDTH
        text = render(self.snapshot(trials, at_end), width=width, max_rows=self.max_rows)
        if not self.is_tty and text.split("\n", 1)[1:] == self._session.last_text.split("\n", 1)[1:]:
            return  # only the clock moved: a log gets no new block
        if self.is_tty and self._session.drawn_lines:
            self.stream.write(f"\x1b[{self._session.drawn_lines}F\x1b[J")  # back to the block's start, clear below
        self.stream.write(text + "\n" + ("" if self.is_tty else "\n"))
        self.stream.flush()
        self._session.last_draw = now
        self._session.last_text = text
        self._session.drawn_lines = text.count("\n") + 1

    # --- Tune's callback hooks -----------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        if total_num_samples and not self.total:
            self.total = int(total_num_samples)
        if self.is_tty and self._session.log_handler is None:
            # A log line printed under the block would be overwritten by the next redraw: clear the block
            # first, so the line lands where the block was and the block is drawn again below it.
            self._session.log_handler = _ClearBeforeLog(self)
            for name in LOGGERS_WITH_HANDLERS:
                logging.getLogger(name).handlers.insert(0, self._session.log_handler)

    def clear(self) -> None:
        """Erase the block drawn last (terminal only); the next hook draws it again."""
        if self.is_tty and self._session.drawn_lines:
            self.stream.write(f"\x1b[{self._session.drawn_lines}F\x1b[J")
            self.stream.flush()
            self._session.drawn_lines = 0
            self._session.last_draw = -math.inf

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._session.live.add(trial.trial_id)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._session.live.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(RESTORE_WARNING):
            log.warning("trial %s: %s", trial.trial_id, result[RESTORE_WARNING])
        self._session.live.add(trial.trial_id)
        self._session.epochs += 1
        self.draw(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._session.ended.add(trial.trial_id)
        if trial_status(trial) == "failed":
            log.warning("trial %s failed (not retried): %s", trial.trial_id, trial.last_result[FAILED])
        self.draw(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._session.ended.add(trial.trial_id)
        log.warning("trial %s failed: %s", trial.trial_id, error_summary(trial))
        self.draw(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.draw(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.draw(trials, force=True, at_end=True)
        if self._session.log_handler is not None:
            for name in LOGGERS_WITH_HANDLERS:
                handlers = logging.getLogger(name).handlers
                if self._session.log_handler in handlers:
                    handlers.remove(self._session.log_handler)
            self._session.log_handler = None


class _ClearBeforeLog(logging.Handler):
    """First handler of the loggers that print: clears the console's block before a record is printed."""

    def __init__(self, console: LiveConsole) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.clear()
