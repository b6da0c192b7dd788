"""Ray start-up and trial resources, in one place (search.run, search.teachers and the preflight use them).

A local Ray binds every port to 127.0.0.1; `ray.address=auto|HOST:PORT` joins an existing
cluster, whose largest node must be able to hold one trial (checked before any trial starts).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from search import interrupt
from search.errors import SearchInputError

log = logging.getLogger("search")

LOOPBACK = "127.0.0.1"
# Ray reads this at import time; false makes its "this node's IP" the loopback address, so a local
# Ray's gRPC servers, agents and dashboard bind 127.0.0.1 instead of every interface.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def trial_resources(cfg: dict[str, Any]) -> dict[str, float]:
    """Ray resources of one trial: trial.cpus, and trial.gpus (None: 1 when CUDA is visible to the driver, else 0)."""
    gpus = cfg["trial"]["gpus"]
    if gpus is None:
        gpus = 1 if local_gpus() else 0
    return {"cpu": cfg["trial"]["cpus"], "gpu": gpus}


def local_gpus() -> int:
    """CUDA devices visible to this process (what a local Ray would offer)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cpus(cfg: dict[str, Any]) -> int:
    """CPUs a local Ray gets: ray.num_cpus, else this machine's."""
    return int(cfg["ray"]["num_cpus"] or os.cpu_count() or 1)


def check_resource_keys(cfg: dict[str, Any]) -> None:
    """trial.cpus/gpus are amounts Ray can place: a fraction <= 1 or a whole number (types and minimums: search.keys)."""
    for key in ("cpus", "gpus"):
        value = cfg["trial"][key]
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


def check_local_resources(cfg: dict[str, Any]) -> None:
    """Before a local Ray starts: one trial must fit this machine (CPUs, GPUs), and device=cuda needs a GPU."""
    check_resource_keys(cfg)
    need = trial_resources(cfg)
    device = str(cfg["train"].get("device", "auto"))
    if device.startswith("cuda") and need["gpu"] == 0:
        raise SearchInputError(f"train.device={device} needs a GPU per trial but trial.gpus=0; "
                               "allowed: trial.gpus > 0, or train.device=auto|cpu")
    if cfg["ray"]["address"]:
        return  # checked against the cluster once connected (check_cluster_resources)
    check_fits(need, {"cpu": local_cpus(cfg), "gpu": local_gpus()}, "this machine"
               + (f" (ray.num_cpus={cfg['ray']['num_cpus']})" if cfg["ray"]["num_cpus"] else ""))


def largest_node() -> dict[str, float]:
    """CPU and GPU of the alive cluster node with the most of them (needs a connected Ray)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    best = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    return {"cpu": float(best.get("CPU", 0)), "gpu": float(best.get("GPU", 0))}


def check_cluster_resources(cfg: dict[str, Any]) -> None:
    """After joining a cluster, before any trial: some node must hold one trial's CPUs and GPUs."""
    import ray

    need = trial_resources(cfg)
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= need["cpu"] and r.get("GPU", 0) >= need["gpu"] for r in nodes):
        return
    biggest = largest_node()
    check_fits(need, biggest, f"the largest node of the cluster at ray.address={cfg['ray']['address']}")
    raise SearchInputError(  # each resource fits some node, but no node has both
        f"trial.cpus={need['cpu']:g} with trial.gpus={need['gpu']:g} fits no single node of the cluster "
        f"at ray.address={cfg['ray']['address']}; lower one of them")


def start_ray(cfg: dict[str, Any]) -> None:
    """Join the cluster (ray.address=auto or an address; its resources checked) or start a local Ray on 127.0.0.1."""
    # Sub-second epochs trigger Tune's "snapshotting too often" warning on every result.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address = cfg["ray"]["address"] or None
    if address is None:
        _bind_loopback()
        import ray

        if not ray.is_initialized():
            log.info("starting a local Ray on %s", LOOPBACK)
        ray.init(num_cpus=cfg["ray"]["num_cpus"], include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, _node_ip_address=LOOPBACK)
    else:
        import ray

        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    interrupt.after_ray_start()
    if address is not None:
        check_cluster_resources(cfg)


def _bind_loopback() -> None:
    """Make this process and the Ray processes it starts treat 127.0.0.1 as the node's address."""
    os.environ[_CLUSTER_SWITCH] = "0"
    import ray._private.ray_constants as ray_constants

    # Read once when ray is first imported; this process may have imported it already.
    ray_constants.ENABLE_RAY_CLUSTER = False
