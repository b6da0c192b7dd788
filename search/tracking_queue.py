"""The tracker's writes as a durable, ordered, bounded queue with a background writer: an MLflow server that does not
answer delays what MLflow shows, never the training.

With an http(s) tracking URI the MLflow tracker (search/tracking.py) turns every Tune callback into a few plain-JSON
operations ("ops") and `put`s them here; it never waits for the server. Each `put` is one *segment*: a file
`<seq>.json` in the search's storage folder (`<storage>/<name>/mlflow-queue/`, written through pyarrow when storage
is a URI such as s3://), so a driver that is killed loses none of them. A thread writes the segments in order and
deletes each once every op in it is written. While the server does not answer, the writer checks it every
PROBE_EVERY_S seconds (GET /health, no retries) and one warning says that writes are queued; one line says when it
answers again. Ops that MLflow refuses (a 4xx answer, or a write that keeps failing while the server answers) are
skipped with a warning so that one bad write never stops the rest.

Bounded: past MAX_OPS pending ops, new per-epoch metric ops are dropped (counted, one warning); the ops that open,
tag and close runs are always kept, so no run is left RUNNING because the queue was full.

What is left when the search ends (the server still down) stays in the folder: the next `resume=true` of the search,
or `python -m search.tracking_sync name=<name> storage=<storage>`, writes it. Replaying a segment that was partly
written before a crash is harmless: every op is idempotent (tags, names and statuses are set to the same values, a
metric op is skipped when its epoch is already logged; see tracking.RunWriter).

The queue knows nothing of MLflow: it is given `apply(op)`, `probe() -> bool` and `transient(err) -> bool`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.storage import make_private
from trainables.paths import is_uri

log = logging.getLogger(__name__)

QUEUE_FOLDER = "mlflow-queue"
TARGET_FILE = "target.json"
"""Where the queued writes were going (tracking URI, experiment): the sync command's default."""
SEGMENT = re.compile(r"^(\d{12})\.json$")
MAX_OPS = 20_000
"""Pending ops past which new per-epoch metric ops are dropped (a few MB on disk)."""
DROPPABLE = ("metrics",)
PROBE_EVERY_S = 2.0
STUCK_AFTER_S = 10.0
"""A write that has not returned after this long counts as the server not answering (for the warning)."""
REFUSALS_BEFORE_SKIP = 5
"""A write that fails this many times while the server answers its health check is skipped."""

Op = dict[str, Any]


def queue_folder(experiment_path: str) -> str:
    """The queue of the search stored at `experiment_path` (a folder or a pyarrow URI)."""
    return f"{experiment_path.rstrip('/')}/{QUEUE_FOLDER}"


# --- the segments on disk (or in object storage) ------------------------------------------------------------
class Journal:
    """The queue's segments in a folder: a local path (files 0600 in a 0700 folder, written atomically) or a pyarrow
    filesystem URI (s3://, gs://, file://; one object per segment)."""

    def __init__(self, folder: str, target: dict[str, str] | None = None) -> None:
        self.folder = folder.rstrip("/")
        self.target = dict(target or {})
        self._ready = False
        self._fs: Any = None
        self._path = ""
        if is_uri(self.folder):
            import pyarrow.fs as pafs

            self._fs, self._path = pafs.FileSystem.from_uri(self.folder)

    # listing and reading
    def segments(self) -> list[int]:
        """Sequence numbers of the segments on disk, in order."""
        return sorted(int(m.group(1)) for m in map(SEGMENT.match, self._names()) if m)

    def _names(self) -> list[str]:
        if self._fs is None:
            folder = Path(self.folder)
            return [p.name for p in folder.iterdir()] if folder.is_dir() else []
        import pyarrow.fs as pafs

        if self._fs.get_file_info(self._path).type != pafs.FileType.Directory:
            return []
        return [info.base_name for info in self._fs.get_file_info(pafs.FileSelector(self._path))]

    def read(self, seq: int) -> list[Op]:
        return json.loads(self._read_text(self._name(seq)))["ops"]

    def load(self) -> list[tuple[int, list[Op]]]:
        """Every readable segment, in order (an unreadable one is named in a warning and left where it is)."""
        out = []
        for seq in self.segments():
            try:
                out.append((seq, self.read(seq)))
            except (OSError, ValueError, KeyError) as err:
                log.warning("queued MLflow writes %s/%s cannot be read (%s); left there, not written",
                            self.folder, self._name(seq), err)
        return out

    def read_target(self) -> dict[str, str]:
        try:
            return json.loads(self._read_text(TARGET_FILE))
        except (OSError, ValueError):
            return {}

    # writing
    def write(self, seq: int, ops: list[Op]) -> None:
        """One segment, whole or not at all."""
        self._prepare()
        self._write_text(self._name(seq), json.dumps({"ops": ops}, separators=(",", ":")))

    def remove(self, seq: int) -> None:
        name = self._name(seq)
        if self._fs is None:
            Path(self.folder, name).unlink(missing_ok=True)
        else:
            self._fs.delete_file(f"{self._path}/{name}")

    def _prepare(self) -> None:
        if self._ready:
            return
        if self._fs is None:
            make_private(self.folder)
        else:
            self._fs.create_dir(self._path, recursive=True)
        if self.target:
            self._write_text(TARGET_FILE, json.dumps(self.target))
        self._ready = True

    @staticmethod
    def _name(seq: int) -> str:
        return f"{seq:012d}.json"

    def _read_text(self, name: str) -> str:
        if self._fs is None:
            return Path(self.folder, name).read_text()
        with self._fs.open_input_stream(f"{self._path}/{name}") as f:
            return f.read().decode()

    def _write_text(self, name: str, text: str) -> None:
        if self._fs is not None:
            with self._fs.open_output_stream(f"{self._path}/{name}") as f:  # one object: all or nothing
                f.write(text.encode())
            return
        final = Path(self.folder, name)
        tmp = final.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, final)


# --- the queue and its writer -------------------------------------------------------------------------------
@dataclass
class _Segment:
    seq: int
    ops: list[Op]
    done: int = 0  # ops of this segment already written
    refusals: int = field(default=0)  # failures of ops[done] while the server answered


class WriteQueue:
    """Ordered, bounded, durable ops written by a background thread (`start`) or in the caller's thread (`flush`)."""

    def __init__(self, journal: Journal | None, apply: Callable[[Op], None], *, probe: Callable[[], bool],
                 transient: Callable[[BaseException], bool], target: str, max_ops: int = MAX_OPS,
                 probe_every_s: float = PROBE_EVERY_S, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.journal = journal
        self.target = target  # the server, as messages name it
        self._apply, self._probe, self._transient = apply, probe, transient
        self.max_ops, self.probe_every_s, self.stuck_after_s = max_ops, probe_every_s, stuck_after_s
        self._cv = threading.Condition()
        self._segments: collections.deque[_Segment] = collections.deque()
        self._pending = 0  # ops not yet written
        self.written = 0
        self.dropped = 0
        self.skipped = 0
        self._down = False  # the writer found the server not answering (cleared when it answers again)
        self._announced = False  # the warning of this outage was given
        self._busy_since: float | None = None  # when the write in progress started
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._persist_failed = False
        loaded = journal.load() if journal is not None else []
        for seq, ops in loaded:
            self._segments.append(_Segment(seq, ops))
            self._pending += len(ops)
        self._next_seq = (loaded[-1][0] + 1) if loaded else (max(journal.segments(), default=-1) + 1 if journal else 0)
        self.replayed = self._pending  # left by an earlier command

    # --- the producer side (Tune's callbacks): never waits for the server ---
    @property
    def pending(self) -> int:
        with self._cv:
            return self._pending

    def put(self, ops: list[Op]) -> None:
        """Queue these ops as one segment (persisted before this returns); never blocks on the server."""
        with self._cv:
            if self._pending >= self.max_ops:
                kept = [op for op in ops if op.get("op") not in DROPPABLE]
                if len(kept) < len(ops) and not self.dropped:
                    log.warning("MLflow write queue full (%d writes pending for %s): per-epoch metrics are dropped "
                                "until it drains; run statuses and tags are still kept", self._pending, self.target)
                self.dropped += len(ops) - len(kept)
                ops = kept
            if not ops:
                return
            seq = self._next_seq
            self._next_seq += 1
            if self.journal is not None:
                try:
                    self.journal.write(seq, ops)
                except Exception as err:  # noqa: BLE001  (local OSError, pyarrow's errors for object storage)
                    if not self._persist_failed:
                        self._persist_failed = True
                        log.warning("cannot save queued MLflow writes in %s (%s); they are kept in memory only",
                                    self.journal.folder, err)
            self._segments.append(_Segment(seq, ops))
            self._pending += len(ops)
            self._cv.notify_all()
            stuck = self._busy_since is not None and time.monotonic() - self._busy_since > self.stuck_after_s
        if stuck:
            self._announce(f"no answer for {self.stuck_after_s:.0f} s")

    # --- the writer ---
    def start(self) -> None:
        """Write in a daemon thread from now on (the segments an earlier command left come first)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlflow-queue-writer", daemon=True)
            self._thread.start()

    def flush(self) -> int:
        """Write in this thread until the queue is empty or the server stops answering; returns the ops left."""
        while True:
            with self._cv:
                if not self._segments:
                    return 0
                segment = self._segments[0]
            if not self._write(segment):
                if self._down:
                    return self.pending
                time.sleep(self.probe_every_s)  # it answers but failed this write: a few more tries, then skipped

    def drain(self, idle_s: float = 10.0, down_idle_s: float = 4.0) -> int:
        """Wait while the writer makes progress, until the queue is empty; give up after `idle_s` (`down_idle_s` while
        the server does not answer) without progress. Returns the ops left."""
        last, since = -1, time.monotonic()
        while True:
            with self._cv:
                if not self._segments or self._thread is None:
                    return self._pending
                if self.written != last:
                    last, since = self.written, time.monotonic()
                limit = down_idle_s if self._down else idle_s
                if time.monotonic() - since > limit:
                    return self._pending
                self._cv.wait(0.2)

    def stop(self) -> None:
        """Stop the writer (a write in progress finishes or is abandoned with the process); pending ops stay on disk."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._segments and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                segment = self._segments[0]
            if not self._write(segment):
                with self._cv:
                    if not self._stopping:
                        self._cv.wait(self.probe_every_s)

    def _write(self, segment: _Segment) -> bool:
        """Write what is left of `segment` (the oldest); False when the server does not answer (try again later)."""
        if self._down and not self._probe():
            return False
        self._down = False
        while segment.done < len(segment.ops):
            op = segment.ops[segment.done]
            with self._cv:
                self._busy_since = time.monotonic()
            try:
                self._apply(op)
            except Exception as err:  # noqa: BLE001  (whatever the client raises decides between retry and skip)
                with self._cv:
                    self._busy_since = None
                if not self._refused(segment, op, err):
                    return False
            with self._cv:
                self._busy_since = None
                segment.done += 1
                segment.refusals = 0
                self._pending -= 1
                self.written += 1
                self._cv.notify_all()
                back = self._announced
            if back:
                self._back()
        if self.journal is not None:
            try:
                self.journal.remove(segment.seq)
            except Exception as err:  # noqa: BLE001  (written: at worst replayed later, which is harmless)
                log.warning("cannot remove written MLflow writes %s/%012d.json: %s", self.journal.folder, segment.seq,
                            err)
        with self._cv:
            self._segments.popleft()
            self._cv.notify_all()
        return True

    def _refused(self, segment: _Segment, op: Op, err: BaseException) -> bool:
        """After a failed write: True to skip the op and go on, False to retry it later (server down or busy)."""
        if self._transient(err):
            if not self._probe():
                self._down = True
                self._announce(_one_line(err))
                return False
            segment.refusals += 1
            if segment.refusals < REFUSALS_BEFORE_SKIP:
                return False
        with self._cv:
            self.skipped += 1
        log.warning("MLflow refused a queued write (%s of %s): %s; it is skipped", op.get("op"),
                    op.get("trial") or "the search", _one_line(err))
        return True

    def _announce(self, why: str) -> None:
        with self._cv:
            if self._announced:
                return
            self._announced = True
            pending = self._pending
        where = f" in {self.journal.folder}" if self.journal is not None else ""
        log.warning("MLflow server %s does not answer (%s): the search goes on, and its MLflow writes are queued%s "
                    "(%d so far) and written in order when it answers again", self.target, why, where, pending)

    def _back(self) -> None:
        """The first write after an announced outage went through: say so once."""
        with self._cv:
            self._announced = False
            pending = self._pending
        log.info("MLflow server %s answers again: writing the %d queued writes", self.target, pending)


def _one_line(err: BaseException) -> str:
    """The error in a few words: the system's reason when there is one ('Connection refused'), else its first 200
    characters (an http client's message nests the URL, the pool and the retries around the reason)."""
    text = " ".join(str(err).split())
    reason = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(Read timed out|timed out)", text)
    return reason.group(1).strip() if reason else f"{type(err).__name__}: {text[:200]}"
