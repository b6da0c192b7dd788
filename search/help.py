"""What `python -m search.run` says about itself: `--help`, `--cfg job`, and the one-line refusals of Hydra forms it does not use.

The search reads plain `key=value` overrides (Hydra's override grammar for values). Tune owns
scheduling and restore, so Hydra's multirun, sweeps, its own `hydra.*` config and keys added
with `+` would have no effect: they are refused with one line instead of silently running a
full search. `--help` renders every key from the same table the driver validates against
(search/keys.py) and TrainConfig's field docstrings, with the defaults Hydra composes for the
given overrides (so `profile=smoke --help` shows the smoke profile's defaults).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from search.errors import SearchInputError
from search.keys import KEYS, value_at

WIDTH = 100
USAGE = "usage: python -m {command} [key=value ...] [--help | -h | --cfg job]"
INTROS = {
    "search.run": (
        "One search on Ray Tune: Optuna proposes trials from spaces/<space>.yaml, ASHA stops weak ones, every "
        "trial checkpoints each epoch, MLflow records the search. dry_run=true checks everything and prints the "
        "plan without starting anything."),
    "search.teachers": (
        "Trains teachers (teachers.names, or every trainable teacher of train.dataset) as Tune trials, saves each "
        "to train.teachers_dir/<name>.pt and registers it in MLflow. dry_run=true prints what it would train."),
}
HELP_FLAGS = ("--help", "-h")
# Hydra's own command-line options other than --help/--cfg: none of them does anything for a search.
HYDRA_OPTIONS = ("--hydra-help", "--version", "--info", "-i", "--resolve", "--package", "-p", "--run", "-r",
                 "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                 "--experimental-rerun")
SWEEP_FUNCTIONS = re.compile(r"^(range|choice|interval|glob|sort|shuffle|tag)\(")


@dataclass(frozen=True)
class CommandLine:
    """What the person asked for: mode help, cfg (print the resolved config) or run, and the key=value overrides."""

    mode: str
    overrides: list[str] = field(default_factory=list)


def read_command_line(argv: Sequence[str]) -> CommandLine:
    """Sort argv into a mode and overrides; raise SearchInputError (one line) for forms that would have no effect."""
    mode, overrides = "run", []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word in HELP_FLAGS:
            mode = "help"
        elif word in ("--cfg", "-c") or word.startswith(("--cfg=", "-c=")):
            what = word.split("=", 1)[1] if "=" in word else (words[i] if i < len(words) else "")
            i += 0 if "=" in word else 1
            if what != "job":
                raise SearchInputError(f"--cfg {what or '(nothing)'}: only --cfg job (the resolved search config) "
                                       f"is available; Hydra's own config is not used")
            mode = "help" if mode == "help" else "cfg"
        elif word in ("-m", "--multirun"):
            raise SearchInputError(f"{word}: a search runs its trials on Ray Tune from one space file, "
                                   f"not as Hydra jobs; choose the space with space=<name> (see --help)")
        elif word.startswith("-"):
            known = "Hydra's option " if word.split("=")[0] in HYDRA_OPTIONS else "option "
            raise SearchInputError(f"{known}{word!r} is not used by the search; allowed: --help, -h, --cfg job, "
                                   f"key=value")
        else:
            overrides.append(_check_override(word))
    return CommandLine(mode, overrides)


def _check_override(word: str) -> str:
    """A plain `key=value`; refuse additions, deletions, hydra.* and sweeps (several values)."""
    key, sep, value = word.partition("=")
    if word.startswith(("+", "~")):
        raise SearchInputError(f"{word!r} adds or removes a key, which the search would ignore; "
                               f"set existing keys with key=value (see --help)")
    if not sep:
        raise SearchInputError(f"argument {word!r} is not key=value (see --help)")
    if key == "hydra" or key.startswith("hydra."):
        raise SearchInputError(f"{key}: Hydra's own settings have no effect on a search (it writes only under "
                               f"storage= and tracking.uri=)")
    if _is_sweep(value):
        raise SearchInputError(f"{word!r} gives several values; one search takes one value per key "
                               f"(run one search per value, or search the key in a space file)")
    return word


def _is_sweep(value: str) -> bool:
    """A comma outside brackets and quotes (a,b) or a sweep function (range(...), choice(...))."""
    if SWEEP_FUNCTIONS.match(value.strip()):
        return True
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


# --- TrainConfig's own documentation ----------------------------------------------------------------
@lru_cache(maxsize=1)
def train_field_docs() -> dict[str, str]:
    """TrainConfig field -> its docstring (the string right after the field in trainables/config.py)."""
    import trainables.config as module

    tree = ast.parse(Path(module.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    docs = {}
    for stmt, nxt in zip(cls.body, cls.body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def train_field_allowed(name: str) -> str:
    """Allowed values of a TrainConfig field from its metadata and the registries ('' when any value of its type)."""
    from trainables.config import DATASETS, TrainConfig

    fld = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    if "choices" in fld.metadata:
        return ", ".join(fld.metadata["choices"])
    if "range" in fld.metadata:
        lo, hi, lo_open = fld.metadata["range"]
        parts = ([f"{'>' if lo_open else '>='}{lo:g}"] if lo is not None else []) + (
            [f"<={hi:g}"] if hi is not None else [])
        return " and ".join(parts)
    if name == "dataset":
        return ", ".join(DATASETS)
    registries = {"student": "trainables.models:MODELS", "method": "trainables.methods:METHODS",
                  "teacher": "trainables.teachers:TEACHERS"}
    if name in registries:
        import importlib

        module, attr = registries[name].split(":")
        names = getattr(importlib.import_module(module), attr).names()
        return ", ".join(names + (["none"] if name == "teacher" else []))
    return ""


# --- rendering ----------------------------------------------------------------------------------------
def show(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if value == "":
        return "''"
    return str(value)


def _rows(rows: Sequence[tuple[str, str, str]], width: int, key_w: int = 24) -> list[str]:
    """Three columns (key, default, meaning), the meaning wrapped; a long default pushes the meaning below."""
    key_w = max([key_w, *(len(k) for k, _, _ in rows)])
    default_w = 16
    indent = 2 + key_w + 2 + default_w + 2
    wrap = textwrap.TextWrapper(width=width, initial_indent=" " * indent, subsequent_indent=" " * indent,
                                break_on_hyphens=False)
    lines = []
    for key, default, meaning in rows:
        head = f"  {key:<{key_w}}  {default}"
        body = wrap.wrap(meaning) or [""]
        if len(default) <= default_w:
            lines.append(head.ljust(indent) + body[0][indent:])
            lines.extend(body[1:])
        else:
            lines.append(head[:width])
            lines.extend(body)
    return [line.rstrip() for line in lines]


def render_help(cfg: Mapping[str, Any], width: int = WIDTH, command: str = "search.run") -> str:
    """`--help` of `python -m <command>`: usage, the flags, every top-level key and every train.<field> with its
    default (from the composed `cfg`) and meaning."""
    from spaces import list_spaces
    from trainables.config import TrainConfig

    profiles = sorted(p.stem for p in (Path(__file__).parent / "conf" / "profile").glob("*.yaml"))
    allowed = {"space": list_spaces(), "profile": profiles}
    profile = cfg.get("profile_name", "paper")
    top = []
    for key in KEYS:
        default = show(profile if key.name == "profile" else value_at(cfg, key.name))
        meaning = key.meaning
        if key.name in allowed:
            meaning += f"; allowed: {', '.join(allowed[key.name])}"
        top.append((key.name, default, meaning))
    docs = train_field_docs()
    train = []
    for f in dataclasses.fields(TrainConfig):
        meaning = docs.get(f.name, "")
        extra = train_field_allowed(f.name)
        if extra:
            meaning += f" Allowed: {extra}."
        train.append((f"train.{f.name}", show(cfg["train"][f.name]), meaning))
    intro = textwrap.fill(
        f"{INTROS[command]} Keys are Hydra-style overrides (key=value; lists as [a,b]). Defaults shown are those "
        f"of profile={profile} with the other words given; `profile=smoke --help` shows the smoke profile's.", width)
    flags = _rows([("--help, -h", "", "this text, then exit"),
                   ("--cfg job", "", "the resolved config (what the command would use) as YAML, then exit")], width)
    out = [USAGE.format(command=command), "", intro, "", "options:", *flags, "", "search keys:", *_rows(top, width), "",
           "training keys (TrainConfig; a space's fixed and searched keys override them):",
           *_rows(train, width)]
    return "\n".join(out) + "\n"


def render_cfg_job(cfg: Mapping[str, Any]) -> str:
    """`--cfg job`: the resolved config as YAML (paths absolute, as Ray and the trials see them)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=False, width=WIDTH)
