"""Headless Chromium screenshots of local web UIs (MLflow, optuna-dashboard) for tests and the README's images."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "apt-get install -y chromium"


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    """Seconds until `url` answers 200; raises TimeoutError (or RuntimeError if `proc` exits first)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def serve(command: Sequence[str], url: str, log: Path, timeout_s: float = 120, env: dict | None = None
          ) -> Iterator[subprocess.Popen]:
    """Start a local server, wait until `url` answers, stop it (its process group) afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(url, timeout_s, proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def screenshot(url: str, png: Path, *, size: tuple[int, int] = (1400, 900), scale: float = 1.0,
               budget_ms: int = 15000, browser: str | None = None) -> Path:
    """Load `url` in headless Chromium (a throwaway profile, no network beyond it) and save a `size` PNG.

    scale < 1 zooms out: the page is laid out in a window of size / scale and drawn at `scale`.
    """
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError(f"no Chromium found; install one with `{INSTALL}`")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--force-device-scale-factor={scale}",
                        f"--window-size={round(size[0] / scale)},{round(size[1] / scale)}",
                        f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", url],
                       capture_output=True, timeout=180, check=True)
    return png


def pixels(png: Path) -> np.ndarray:
    """The PNG as an (H, W, channels) float array."""
    import matplotlib.image

    return matplotlib.image.imread(str(png))


def distinct_colours(image: np.ndarray) -> int:
    """How many different pixel values an image has (a blank or error page has a handful)."""
    flat = (image.reshape(-1, image.shape[-1]) * 255).astype(np.uint8)
    return len(np.unique(flat, axis=0))
