"""The driver process: Ray start-up and trial resources, stop signals, and the libraries' noise.

One place owns what the process running `search.run` or `search.teachers` does around Tune:
- Ray: a local Ray binds every port to 127.0.0.1; `ray.address=auto|HOST:PORT` joins an existing
  cluster, whose nodes must be able to hold one trial (checked before any trial starts);
- signals: SIGINT/SIGTERM stop the search cleanly, remember which signal, exit 130 or 143;
- noise: Ray, Tune, Optuna and MLflow chatter off before anything starts (`verbose=true` keeps it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from search.config import SearchConfig, SearchInputError
from search.storage import make_private
from trainables.paths import is_uri
from trainables.shipping import collect

log = logging.getLogger("search")

# Ray, torch and Optuna are imported inside the functions that use them: each costs seconds to import, and
# --help, --cfg job and a refused command line answer without them.


# --- Ray: start-up and one trial's resources ----------------------------------------------------------------
LOOPBACK = "127.0.0.1"
NODE_CHECK_TIMEOUT_S = 120
# Ray reads this at import time; false makes its "this node's IP" the loopback address, so a local
# Ray's gRPC servers, agents and dashboard bind 127.0.0.1 instead of every interface.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def trial_resources(cfg: SearchConfig) -> dict[str, float]:
    """Ray resources of one trial: trial.cpus, and trial.gpus (None: 1 when CUDA is visible to the driver, else 0)."""
    gpus = cfg.trial.gpus
    if gpus is None:
        gpus = 1 if local_gpus() else 0
    return {"cpu": cfg.trial.cpus, "gpu": gpus}


def trial_function(trainable: Callable, cfg: SearchConfig, trains: Iterable[Mapping[str, Any]],
                   teachers: Iterable[Path] = ()) -> Any:
    """`trainable` with one trial's resources; on a cluster (ray.address set) also with this machine's files that the
    train configs `trains` read (dataset files, and the teacher files `teachers`) in Ray's object store, put once and
    fetched once per node (trainables.shipping); on one machine the trials read the files where they are."""
    from ray import tune  # heavy: only once trials start

    if cfg.ray.address:
        shipped = collect(trains, teachers)
        if shipped:
            log.info("shipping %d file(s), %.1f MB, of this machine to the cluster's nodes (teachers, dataset)",
                     len(shipped), shipped.size / 1e6)
            trainable = tune.with_parameters(trainable, shipped=shipped)
    return tune.with_resources(trainable, trial_resources(cfg))


def local_gpus() -> int:
    """CUDA devices visible to this process (what a local Ray would offer)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cpus(cfg: SearchConfig) -> int:
    """CPUs a local Ray gets: ray.num_cpus, else this machine's."""
    return int(cfg.ray.num_cpus or os.cpu_count() or 1)


def check_resource_keys(cfg: SearchConfig) -> None:
    """trial.cpus/gpus are amounts Ray can place: a fraction <= 1 or a whole number (types and minimums: search.config)."""
    for key in ("cpus", "gpus"):
        value = getattr(cfg.trial, key)
        if value is not None and value > 1 and float(value) != int(value):
            raise SearchInputError(f"trial.{key}={value} is not allowed; allowed: a fraction <= 1 or a whole number")


def check_fits(need: dict[str, float], have: dict[str, float], where: str) -> None:
    """Raise a one-line error when one trial's request can never be met by `have` (a node's CPU and GPU)."""
    for key, label in (("cpu", "cpus"), ("gpu", "gpus")):
        if need[key] > have.get(key, 0):
            available = have.get(key, 0)
            available = int(available) if float(available).is_integer() else available
            hint = " (or trial.gpus=null: one GPU when there is one)" if key == "gpu" else ""
            raise SearchInputError(
                f"trial.{label}={need[key]:g} can never run: {where} has {available} {label.upper()[:-1]}"
                f"{'s' if available != 1 else ''}; allowed: trial.{label} <= {available}{hint}")


def check_local_resources(cfg: SearchConfig) -> None:
    """Before a local Ray starts: one trial must fit this machine (CPUs, GPUs), and device=cuda needs a GPU."""
    check_resource_keys(cfg)
    need = trial_resources(cfg)
    device = cfg.train.device
    if device.startswith("cuda") and need["gpu"] == 0:
        raise SearchInputError(f"train.device={device} needs a GPU per trial but trial.gpus=0; "
                               "allowed: trial.gpus > 0, or train.device=auto|cpu")
    if cfg.ray.address:
        return  # checked against the cluster once connected (check_cluster_resources)
    check_fits(need, {"cpu": local_cpus(cfg), "gpu": local_gpus()}, "this machine"
               + (f" (ray.num_cpus={cfg.ray.num_cpus})" if cfg.ray.num_cpus else ""))


def largest_node() -> dict[str, float]:
    """CPU and GPU of the alive cluster node with the most of them (needs a connected Ray)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    best = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    return {"cpu": float(best.get("CPU", 0)), "gpu": float(best.get("GPU", 0))}


def check_cluster_resources(cfg: SearchConfig) -> None:
    """After joining a cluster, before any trial: some node must hold one trial's CPUs and GPUs."""
    import ray

    need = trial_resources(cfg)
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= need["cpu"] and r.get("GPU", 0) >= need["gpu"] for r in nodes):
        return
    biggest = largest_node()
    check_fits(need, biggest, f"the largest node of the cluster at ray.address={cfg.ray.address}")
    raise SearchInputError(  # each resource fits some node, but no node has both
        f"trial.cpus={need['cpu']:g} with trial.gpus={need['gpu']:g} fits no single node of the cluster "
        f"at ray.address={cfg.ray.address}; lower one of them")


def start_ray(cfg: SearchConfig, shared: dict[str, str] | None = None) -> None:
    """Join the cluster (ray.address=auto or an address; its resources checked, and every node that may run a trial
    checked to see the local folders in `shared`, key -> path) or start a local Ray on 127.0.0.1."""
    # Sub-second epochs trigger Tune's "snapshotting too often" warning on every result.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address = cfg.ray.address or None
    if address is None:
        _bind_loopback()
        import ray

        if not ray.is_initialized():
            log.info("starting a local Ray on %s", LOOPBACK)
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, _node_ip_address=LOOPBACK)
    else:
        import ray

        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    after_ray_start()
    if address is not None:
        check_cluster_resources(cfg)
        check_nodes(cfg, {key: path for key, path in (shared or {}).items() if path and not is_uri(path)})


NODE_MARKER = ".rslad-node-check-"


def check_nodes(cfg: SearchConfig, folders: dict[str, str]) -> None:
    """Before any trial: every alive node that can hold a trial imports the project's code and sees each folder in
    `folders` (key -> a local path of this machine, created here; the key names it in the error). A marker file
    written here must be visible there, as Ray's own storage check does, but for every node at once and with one
    line that names the node and the folder."""
    import ray  # heavy: only on a cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    markers = {}
    for key, folder in folders.items():
        make_private(folder)
        marker = Path(folder) / f"{NODE_MARKER}{uuid.uuid4().hex}"
        marker.touch()
        markers[key] = str(marker)
    need = trial_resources(cfg)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= need["cpu"]
             and n["Resources"].get("GPU", 0) >= need["gpu"]]
    probe = ray.remote(num_cpus=0, max_retries=0)(_missing_here)
    try:
        pending = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                   .remote(markers): n for n in nodes}
        for ref, node in pending.items():
            where = f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            try:
                missing = ray.get(ref, timeout=NODE_CHECK_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001  (an import error of the code, a node that died: each means "cannot run trials")
                first = " ".join(str(err).split())[-300:]
                raise SearchInputError(f"{where} cannot run the search's code ({type(err).__name__}: {first}); "
                                       "submit with `ray job submit --working-dir .` or install the project on every "
                                       "node") from None
            if missing:
                key = missing[0]
                raise SearchInputError(
                    f"{where} cannot see {key}={folders[key]}, a folder of this machine; use {key}=s3://bucket/prefix "
                    f"(object storage) or a folder every node mounts")
    finally:
        for marker in markers.values():
            Path(marker).unlink(missing_ok=True)


def _missing_here(markers: dict[str, str]) -> list[str]:
    """On a node: the keys whose marker file this node cannot see."""
    return [key for key, marker in markers.items() if not os.path.exists(marker)]


def _bind_loopback() -> None:
    """Make this process and the Ray processes it starts treat 127.0.0.1 as the node's address."""
    os.environ[_CLUSTER_SWITCH] = "0"
    import ray._private.ray_constants as ray_constants

    # Read once when ray is first imported; this process may have imported it already.
    ray_constants.ENABLE_RAY_CLUSTER = False


# --- stop signals -------------------------------------------------------------------------------------------
# SIGINT/SIGTERM of the driver: stop the search cleanly, remember which signal, exit 130 or 143.
#
# Tune's own SIGINT handler stops the run and saves its state but then returns as if the search had
# ended. Ours records the signal (the MLflow tracker and the summary read it) and asks Tune to stop
# the same way through the SIGUSR1 handler Tune installs while it runs; a second signal aborts at once.

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


# --- library noise ------------------------------------------------------------------------------------------
# Library noise off for a person at a terminal: one call before Ray starts; `verbose=true` leaves it all on.
#
# What each setting silences (seen in a smoke search with ray 2.60, optuna 5.0, mlflow 3.x):
# - RAY_AIR_NEW_OUTPUT=0: Tune's new output engine prints its "Configuration for experiment" box,
#   "View detailed results here" and the TensorBoard hint even at verbose=0; the legacy engine at
#   verbose=0 prints nothing (the search has its own console).
# - ray._private.worker: "Started a local Ray instance.", "Calling ray.init() again ...".
# - ray._private.authentication: the token-auth notice and "Generated new authentication token"
#   (token auth stays on; only the message goes).
# - ray.tune: "Wrote the latest version of all result files ..." after every search.
# - ray.tune.tune (a filter, these two only): on a stop signal "Stop signal received ... Press CTRL+C
#   ... to skip" and "Experiment has been interrupted ... Resume experiment with: Tuner.restore(...)";
#   the search says itself that its state is saved, and which command continues it.
# - optuna: "A new study created in memory/RDB ...", "Using an existing study ...", and its
#   ExperimentalWarning category.
# - mlflow.store.db.utils, alembic: "Creating initial MLflow database tables...", "Updating database
#   tables", alembic's migration lines on a new SQLite store.
# Warnings and errors of these libraries still print.

ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A tqdm bar per artifact transfer (a search uploads configs and teacher weights).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # With an http(s) tracking URI, "🏃 View run ... at: http://..." and "🧪 View experiment at: ..." on stdout each
    # time a run ends (MlflowClient.set_terminated -> TrackingServiceClient._log_url in MLflow 3.x).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# Levels on child loggers: ray.init() resets the "ray" logger's own level, not these.
LOGGER_LEVELS = {
    "ray._private.worker": logging.WARNING,
    "ray._private.authentication": logging.ERROR,
    "ray.tune": logging.WARNING,
    "ray.air": logging.WARNING,
    "mlflow.store.db.utils": logging.WARNING,
    "alembic": logging.WARNING,
    # "Retrying (Retry(total=...)) after connection broken by ..." per retry while a tracking server does not answer
    # (the tracker's queue says it once: search/tracking_queue.py).
    "urllib3.connectionpool": logging.ERROR,
}


# Tune's own advice when the driver is stopped: a Python API instead of the command that continues the search.
TUNE_STOP_ADVICE = ("Stop signal received", "Experiment has been interrupted", "Training has been interrupted")


class _DropTuneStopAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TUNE_STOP_ADVICE)


def quiet_libraries(verbose: bool = False) -> None:
    """Switch off Ray, Tune, Optuna and MLflow chatter (verbose=True: change nothing); call before ray.init()."""
    if verbose:
        return
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)  # a value the person set wins
    for name, level in LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _DropTuneStopAdvice) for f in tune_logger.filters):
        tune_logger.addFilter(_DropTuneStopAdvice())
    import optuna

    # Optuna sets its own logger's level when first imported, so it is set through Optuna.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
