"""Where a search's time goes: runs the real `python -m search.run` and splits its wall time.

Run: python -m benchmarks.search_time [--num-samples 4 8 16] [--workdir DIR] [--json OUT] -- [search.run keys ...]
e.g. python -m benchmarks.search_time --num-samples 4 8 -- space=alpha profile=smoke max_concurrent=2

Each run gets its own storage and MLflow database under --workdir (teachers are shared between
the runs of one invocation, so only the first trains them). The command runs in a child process
with timers around library entry points (ray.init, Tuner.fit, MlflowClient methods, the driver's
teacher_weights.provide) and a Tune callback that records when each trial starts and reports; the trials'
own result.json files give their epoch times. Printed per run:

- Ray start-up, teacher provision, the search (Tuner.fit), MLflow calls in the driver, exit (Ray shut-down);
- per trial, in trial-seconds: epochs (train + validation), fixed cost (start to first result, less the
  first epoch and one checkpoint), checkpoint + report (per epoch, beyond the epoch itself);
- trial-epochs per hour of wall time.
Prints numbers only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

TIMERS_ENV = "RSLAD_SEARCH_TIMERS"
REPO = Path(__file__).resolve().parents[1]


# --- inside the child: timers around the command ------------------------------------------
class Timers:
    """Accumulated seconds per label, trial events, written as JSON when the process exits."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.start = time.time()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.trials: dict[str, dict[str, Any]] = {}
        self.installed: float | None = None
        self.main_end: float | None = None
        self.active: list[str] = []

    def wrap(self, owner: Any, attr: str, label: str, exclusive_of: tuple[str, ...] = ()) -> None:
        """Time every call of owner.attr under `label`, except calls made while a label in exclusive_of is running."""
        original = getattr(owner, attr)
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if any(a in timers.active for a in exclusive_of):
                return original(*args, **kwargs)
            outer = list(timers.active)
            timers.active.append(label)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.active.remove(label)
                elapsed = time.perf_counter() - start
                timers.seconds[label] = timers.seconds.get(label, 0.0) + elapsed
                timers.calls[label] = timers.calls.get(label, 0) + 1
                for o in outer:  # e.g. Ray started by the teacher step: counted once, under ray_init
                    key = f"{label}_in_{o}"
                    timers.seconds[key] = timers.seconds.get(key, 0.0) + elapsed

        setattr(owner, attr, timed)

    def dump(self) -> None:
        """Write what was measured (called at exit, after Ray's own exit handlers)."""
        Path(self.path).write_text(json.dumps({
            "start": self.start, "installed": self.installed, "main_end": self.main_end, "exit": time.time(), "seconds": self.seconds,
            "calls": self.calls, "trials": self.trials}))


def install(timers: Timers) -> None:
    """Put the timers around Ray, Tune, MLflow and the driver's teacher step, and a trial-event callback into every Tuner."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    timers.wrap(ray, "init", "ray_init")
    timers.wrap(tune.Tuner, "fit", "tuner_fit", exclusive_of=("teachers",))
    import inspect

    for name in dir(MlflowClient):
        if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(MlflowClient, name)):
            timers.wrap(MlflowClient, name, "mlflow", exclusive_of=("mlflow", "teachers"))
    try:
        import search.teacher_weights as teacher_weights

        timers.wrap(teacher_weights, "provide", "teachers")
    except (ImportError, AttributeError) as err:
        print(f"search_time: no teacher timer ({err})", file=sys.stderr)

    class TrialClock(tune.Callback):
        """When each trial (re)starts and reports, on the driver's clock."""

        def on_trial_start(self, iteration, trials, trial, **info):
            timers.trials.setdefault(trial.trial_id, {"starts": [], "results": []})["starts"].append(time.time())

        on_trial_restore = on_trial_start

        def on_trial_result(self, iteration, trials, trial, result, **info):
            timers.trials.setdefault(trial.trial_id, {"starts": [], "results": []})["results"].append(time.time())

    original_init = tune.Tuner.__init__

    def init_with_clock(self, *args: Any, **kwargs: Any) -> None:
        run_config = kwargs.get("run_config")
        if run_config is not None and not any(isinstance(c, TrialClock) for c in (run_config.callbacks or [])):
            run_config.callbacks = [*(run_config.callbacks or []), TrialClock()]
        original_init(self, *args, **kwargs)

    tune.Tuner.__init__ = init_with_clock


def child_main(argv: list[str]) -> None:
    """Run `python -m search.run argv` in this process with the timers installed."""
    import runpy

    timers = Timers(os.environ[TIMERS_ENV])
    atexit.register(timers.dump)  # registered first, so it runs after Ray's exit handlers
    install(timers)
    timers.installed = time.time()
    sys.argv = ["search.run", *argv]
    try:
        runpy.run_module("search.run", run_name="__main__", alter_sys=True)
    finally:
        timers.main_end = time.time()


# --- in the parent: run, then read the trials' results -------------------------------------
def read_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> its result.json rows, for every trial folder of an experiment."""
    out = {}
    for path in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[str(rows[0].get("trial_id", path.parent.name))] = rows
    return out


def split(timers: dict[str, Any], results: dict[str, list[dict[str, Any]]], wall: float) -> dict[str, float]:
    """The time split of one run (seconds of wall time, and trial-seconds for the per-trial parts)."""
    s = timers["seconds"]
    epochs = sum(len(rows) for rows in results.values())
    train = sum(r.get("epoch_time_s", 0.0) for rows in results.values() for r in rows)
    # Beyond the epoch itself, each report carries a checkpoint write and Tune's bookkeeping.
    extra = [r["time_this_iter_s"] - r.get("epoch_time_s", 0.0) for rows in results.values() for r in rows[1:]
             if "time_this_iter_s" in r]
    per_report = statistics.median(extra) if extra else 0.0
    fixed = []
    for trial_id, rows in results.items():
        clock = timers["trials"].get(trial_id, {})
        if clock.get("starts") and clock.get("results"):
            fixed.append(clock["results"][0] - clock["starts"][0] - rows[0].get("epoch_time_s", 0.0) - per_report)
    clocks = [timers["trials"].get(t, {}) for t in results]  # the search's trials, not the teacher step's
    slot = sum(c["results"][-1] - c["starts"][0] for c in clocks if c.get("starts") and c.get("results"))
    fit = s.get("tuner_fit", 0.0)
    out = {
        "wall_s": wall,
        "child_start_s": timers["installed"] - timers["parent_start"],
        "ray_init_s": s.get("ray_init", 0.0),
        "teachers_s": s.get("teachers", 0.0) - s.get("ray_init_in_teachers", 0.0),
        "tuner_fit_s": fit,
        "mlflow_driver_s": s.get("mlflow", 0.0),
        "exit_s": timers["exit"] - (timers["main_end"] or timers["exit"]),
        "trials": len(results),
        "workers": len({r["pid"] for rows in results.values() for r in rows if "pid" in r}),
        "trial_epochs": epochs,
        "trial_seconds": slot,
        "epochs_trial_s": train,
        "fixed_trial_s": sum(fixed),
        "fixed_per_trial_s": statistics.median(fixed) if fixed else float("nan"),
        "checkpoint_report_trial_s": per_report * max(epochs - len(results), 0),
        "per_report_s": per_report,
        "epoch_s": statistics.median([r["epoch_time_s"] for rows in results.values() for r in rows if "epoch_time_s" in r] or [float("nan")]),
        "trial_epochs_per_hour": epochs / wall * 3600 if wall > 0 else 0.0,
        "trial_epochs_per_hour_in_fit": epochs / fit * 3600 if fit > 0 else 0.0,
    }
    parts = ("child_start_s", "ray_init_s", "teachers_s", "tuner_fit_s", "exit_s")
    out["other_s"] = wall - sum(out[k] for k in parts)
    return out


def run_search(keys: list[str], num_samples: int, workdir: Path, index: int) -> dict[str, float]:
    """Run one search in a child process with its own storage and MLflow database; return its split."""
    name = f"search-time-{num_samples}-{index}-{int(time.time())}"
    overrides = [*keys, f"num_samples={num_samples}", f"name={name}", f"storage={workdir / 'ray_results'}",
                 f"tracking.uri=sqlite:///{workdir / f'mlruns-{index}.db'}"]
    if not any(k.startswith("train.teachers_dir=") for k in keys):
        overrides.append(f"train.teachers_dir={workdir / 'teachers'}")
    timers_file = workdir / f"timers-{index}.json"
    env = {**os.environ, TIMERS_ENV: str(timers_file)}
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "benchmarks.search_time", "--child", "--", *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"search.run {' '.join(overrides)} exited {done.returncode}:\n{tail}")
    timers = json.loads(timers_file.read_text())
    timers["parent_start"] = start
    return split(timers, read_results(workdir / "ray_results" / name), wall)


ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("wall_s", "wall time, s", "{:.1f}".format),
    ("child_start_s", "  python start-up, importing ray and mlflow, s", "{:.1f}".format),
    ("ray_init_s", "  Ray start-up (ray.init), s", "{:.1f}".format),
    ("teachers_s", "  teachers (find, load or train; Ray start-up not included), s", "{:.1f}".format),
    ("tuner_fit_s", "  the search (Tuner.fit), s", "{:.1f}".format),
    ("mlflow_driver_s", "    of which MLflow calls in the driver, s", "{:.1f}".format),
    ("exit_s", "  exit (Ray shut-down), s", "{:.1f}".format),
    ("other_s", "  the rest (planning, preflight, summary), s", "{:.1f}".format),
    ("trials", "trials", "{:.0f}".format),
    ("workers", "worker processes (fewer than trials: reused)", "{:.0f}".format),
    ("trial_epochs", "trial-epochs", "{:.0f}".format),
    ("trial_seconds", "trial-seconds (each trial's start to last result, summed)", "{:.1f}".format),
    ("epochs_trial_s", "  epochs (train + validation), trial-s", "{:.1f}".format),
    ("fixed_trial_s", "  fixed cost (start to first result, less epoch and report), trial-s", "{:.1f}".format),
    ("checkpoint_report_trial_s", "  checkpoint + report after epochs 2.., trial-s", "{:.1f}".format),
    ("fixed_per_trial_s", "fixed cost per trial (median), s", "{:.1f}".format),
    ("epoch_s", "one epoch (median), s", "{:.2f}".format),
    ("per_report_s", "checkpoint + report per epoch (median), s", "{:.2f}".format),
    ("trial_epochs_per_hour", "trial-epochs per hour of wall time", "{:,.0f}".format),
    ("trial_epochs_per_hour_in_fit", "trial-epochs per hour inside Tuner.fit", "{:,.0f}".format),
]


def print_table(runs: list[tuple[int, dict[str, float]]]) -> None:
    """One column per run."""
    header = f"{'num_samples':<72}" + "".join(f"{n:>12}" for n, _ in runs)
    print(header)
    print("-" * len(header))
    for key, label, fmt in ROWS:
        print(f"{label:<72}" + "".join(f"{fmt(r[key]):>12}" for _, r in runs))


def main(argv: list[str] | None = None) -> int:
    """Parse options, run each num_samples in turn, print the splits (and write them as JSON if asked)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[2:] if argv[1:2] == ["--"] else argv[1:])
        return 0
    ours, keys = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--workdir", default=None, help="where storage, MLflow databases and teachers go (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the splits to this JSON file")
    args = p.parse_args(ours)
    keys = keys or ["space=alpha", "profile=smoke"]
    with tempfile.TemporaryDirectory(prefix="search-time-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"search.run {' '.join(keys)}  (work dir {workdir}; load average "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())})")
        runs = [(n, run_search(keys, n, workdir, i)) for i, n in enumerate(args.num_samples)]
    print_table(runs)
    if args.json:
        Path(args.json).write_text(json.dumps([{"num_samples": n, **r} for n, r in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
