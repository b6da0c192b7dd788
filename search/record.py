"""The search's own description in its storage folder: its identity and the settings a resume must keep.

Tune restores a search from the pickles in its folder and ignores what a later command says about
the space, the budget or the training config. So the driver writes `rslad-search.json` when a
search starts, and `resume=true` compares it with the current command before Ray starts and
names every key that differs. Its `search_id` also tags the MLflow experiment, so a name used by
another search (other storage, other store) is recognised.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from trainables.paths import is_uri

RECORD_FILE = "rslad-search.json"
FORMAT = 2
STUDY = "study_url"
"""The Optuna study's database URL (None: in memory), kept for the resume: the restored searcher goes on writing
there whatever the resuming command's tracking.uri. Searches recorded without it (format 1) kept their study in
memory through a searcher class this version no longer has, so they cannot be resumed by it."""


def settings(plan: Any) -> dict[str, Any]:
    """Everything a resumed search keeps from its start, flat and JSON-safe: compared on resume."""
    cfg = plan.cfg
    keys: dict[str, Any] = {
        "space": plan.space.name,
        "space file": hashlib.sha256(Path(plan.space.source).read_bytes()).hexdigest()[:16],
        "profile": plan.profile,
        "num_samples": plan.num_samples,
        "max_concurrent": plan.max_concurrent,
        "seed": cfg["seed"],
        "scheduler": plan.scheduler,
        "trial.checkpoint_every": cfg["trial"]["checkpoint_every"],
        "trial.max_failures": cfg["trial"]["max_failures"],
        "tracking.enabled": cfg["tracking"]["enabled"],
    }
    keys.update({f"train.{k}": v for k, v in plan.base_train.items()})
    return json.loads(json.dumps(keys))  # tuples -> lists, as they come back from the file


def new_record(plan: Any) -> dict[str, Any]:
    """A fresh description (new search id) for `plan`."""
    return {"format": FORMAT, "search_id": uuid.uuid4().hex, "name": plan.name,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "storage": plan.experiment_path, STUDY: plan.study_url, "settings": settings(plan)}


def with_new_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with TrainConfig fields added since the search started, at their defaults.

    Its trials' configs lack those fields, and TrainConfig fills them with the default when a trial loads.
    """
    from trainables.config import TrainConfig

    defaults = json.loads(json.dumps({f"train.{k}": v for k, v in TrainConfig().to_dict().items()}))
    return {**defaults, **saved}


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key (saved -> now)' for each key whose value differs (missing keys count as differing)."""
    out = []
    for key in sorted(set(saved) | set(current), key=lambda k: (k.startswith("train."), k)):
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if old != new:
            out.append(f"{key} ({_short(old)} -> {_short(new)})")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def path_of(experiment_path: str) -> str:
    """Where the description of the search at experiment_path lives."""
    return f"{experiment_path.rstrip('/')}/{RECORD_FILE}"


def read(experiment_path: str) -> dict[str, Any] | None:
    """The saved description, or None when the folder has none (a new name, or a search from an older version)."""
    where = path_of(experiment_path)
    if is_uri(where):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(where)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    local = Path(where)
    return json.loads(local.read_text()) if local.is_file() else None


def write(experiment_path: str, record: dict[str, Any]) -> None:
    """Write the description atomically (readable by its owner only on a local disk)."""
    where = path_of(experiment_path)
    text = json.dumps(record, indent=1, sort_keys=True)
    if is_uri(where):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(where)
        with fs.open_output_stream(path) as f:
            f.write(text.encode())
        return
    local = Path(where)
    tmp = local.with_name(f".{local.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, local)
