"""SIGINT/SIGTERM of the driver: stop the search cleanly, remember which signal, exit 130 or 143.

Tune's own SIGINT handler stops the run and saves its state but then returns as if the search had
ended. Ours records the signal (the MLflow tracker and the summary read it) and asks Tune to stop
the same way through the SIGUSR1 handler Tune installs while it runs; a second signal aborts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any, Iterator

log = logging.getLogger("search")

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
_received: list[str] = []
_installed: list[str | None] = []
"""[the previous value of TUNE_DISABLE_SIGINT_HANDLER] once install() ran."""
_TUNE_SWITCH = "TUNE_DISABLE_SIGINT_HANDLER"


def received() -> str | None:
    """'SIGINT' or 'SIGTERM' once the driver was asked to stop, else None."""
    return _received[0] if _received else None


def exit_code() -> int:
    """128 + the signal number of the first stop signal (130 for SIGINT, 143 for SIGTERM)."""
    return EXIT_CODES[received() or "SIGINT"]


def reset() -> None:
    """Forget an earlier signal and the handlers, and give Tune its SIGINT handler back (in-process callers)."""
    _received.clear()
    if _installed:
        # install() switched Tune's handler off for this process and its children: undo that.
        previous = _installed[0]
        if previous is None:
            os.environ.pop(_TUNE_SWITCH, None)
        else:
            os.environ[_TUNE_SWITCH] = previous
    _installed.clear()


def install() -> None:
    """Catch SIGINT and SIGTERM in the driver (main thread only) for the rest of the command."""
    # Tune would otherwise replace our SIGINT handler while it runs.
    previous = os.environ.get(_TUNE_SWITCH)
    os.environ[_TUNE_SWITCH] = "1"
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    _installed[:] = [previous]


def after_ray_start() -> None:
    """ray.init() puts its own SIGTERM handlers in the driver (exit, then abort): take SIGTERM back."""
    if _installed:
        signal.signal(signal.SIGTERM, _handle)


@contextlib.contextmanager
def tune_running() -> Iterator[None]:
    """Around `tuner.fit()`: Tune installs its SIGUSR1 stop handler inside and never removes it."""
    try:
        yield
    finally:
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def _handle(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    again = bool(_received)
    if not again:
        _received.append(name)
    tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if again or not callable(tune_stop):
        # Not inside Tune's loop (Ray starting, teachers training), or asked twice: stop now.
        raise KeyboardInterrupt(name)
    log.warning("%s received: stopping the search and saving its state (send it again to abort at once)", name)
    tune_stop(signum, frame)
