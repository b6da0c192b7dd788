"""Compose the search command's config with Hydra (the only Hydra user in the project)."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainables.config import TrainConfig
from trainables.paths import absolute, absolute_tracking_uri

CONFIG_MODULE = "search.conf"


class SearchConfigError(ValueError):
    """Bad command-line override or config value; the message is one line naming the key."""


def _store_train_defaults() -> None:
    # The `train` node is generated from TrainConfig so `train.<field>=` works for every field
    # (Hydra refuses overrides of keys it does not know) without restating the defaults in YAML.
    ConfigStore.instance().store(name="train_defaults", node={"train": TrainConfig().to_dict()})


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose conf/config.yaml with the overrides and return plain, resolved containers."""
    _store_train_defaults()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(version_base="1.3", config_module=CONFIG_MODULE):
            cfg = compose(config_name="config", overrides=list(overrides))
        # Plain containers only: nothing Hydra/OmegaConf-typed may reach Ray.
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        raise SearchConfigError(explain(str(err), overrides)) from None
    finally:
        GlobalHydra.instance().clear()


def explain(message: str, overrides: Sequence[str]) -> str:
    """Hydra's multi-line error as one line that names the key and what is allowed."""
    unknown = re.search(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        if key.startswith("train."):
            return f"unknown key {key!r}; allowed train keys: {', '.join(TrainConfig().to_dict())}"
        known = ", ".join(k for k in _top_level_keys() if k != "train") + ", train.<field>"
        return f"unknown key {key!r}; allowed keys: {known}"
    missing = re.search(r"Could not find '([^/']+)/([^']+)'.*?Available options in '[^']+':\s*(.*?)\s*Config search path", message, re.S)
    if missing:
        group, value, options = missing.groups()
        return f"{group}={value!r} not found; allowed: {', '.join(options.split())}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "Set the environment"))]
    return " ".join(lines)


def _top_level_keys() -> list[str]:
    """Keys of conf/config.yaml (for error messages)."""
    import yaml

    text = (Path(__file__).parent / "conf" / "config.yaml").read_text()
    return [k for k in yaml.safe_load(text) if k != "defaults"] + ["profile"]


def default_name(space: str, profile: str) -> str:
    """Experiment name from space, profile and the time: alpha-smoke-20261125-130201."""
    return f"{space}-{profile}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def resolve_paths(cfg: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Every path the trials or Ray jobs see made absolute in the driver (trials run in other cwds)."""
    cfg = {**cfg, "train": dict(cfg["train"]), "tracking": dict(cfg["tracking"]), "optuna": dict(cfg["optuna"])}
    cfg["storage"] = absolute(cfg["storage"], base)
    cfg["tracking"]["uri"] = absolute_tracking_uri(cfg["tracking"]["uri"], base)
    cfg["optuna"]["storage"] = absolute_tracking_uri(cfg["optuna"]["storage"], base)
    for key in ("data_dir", "teachers_dir", "teacher_checkpoint", "rsl_cache_dir"):
        cfg["train"][key] = absolute(cfg["train"][key], base)
    return cfg
