"""The command line of every command: argv forms and refusals, --help, --cfg job, one-line errors, exit codes.

`search.run` and `search.teachers` read Hydra-style `key=value` overrides (Hydra's override grammar for
values; composed by search.config). Tune owns scheduling and restore, so Hydra's multirun, sweeps, its
own `hydra.*` config and keys added with `+` would have no effect: they are refused with one line
instead of silently running a full search. `analysis.finalize` and `analysis.report` take plain
`key=value` options from a table of `Option`s. Every command prints its `--help` from its schema (the
SearchConfig and TrainConfig field docstrings, or its options), and `run_cli` turns a UserError into
`error: <one line>` and exit code 2, a stop signal into 130/143.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import yaml

from search import driver
from search.config import (
    SearchConfig,
    SearchConfigError,
    SearchInputError,
    compose_config,
    field_docs,
    load_config,
    profiles,
    search_key_docs,
    search_keys,
)
from spaces import list_spaces
from trainables.config import DATASETS, TrainConfig
from trainables.errors import UserError
from trainables.methods import METHODS
from trainables.models import MODELS
from trainables.teachers import TEACHERS

log = logging.getLogger("search")

EXIT_BAD_INPUT = 2
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
    "search.replicate": (
        "Trains the finalists of a finished search (name=, its replicate.top_k best trials) again with "
        "replicate.seeds new seeds each, to the end of their schedules, as child runs of the search's parent run; "
        "prints each configuration's mean, sd and 95 % interval and whether the winner is distinguishable from each "
        "runner-up. The same command continues interrupted replicates. dry_run=true checks everything and prints "
        "the plan."),
}
HELP_FLAGS = ("--help", "-h")
# Hydra's own command-line options other than --help/--cfg: none of them does anything for a search.
HYDRA_OPTIONS = ("--hydra-help", "--version", "--info", "-i", "--resolve", "--package", "-p", "--run", "-r",
                 "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                 "--experimental-rerun")
SWEEP_FUNCTIONS = re.compile(r"^(range|choice|interval|glob|sort|shuffle|tag)\(")

def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` with logging set up; a UserError becomes 'error: <one line>' on stderr and exit code 2, a
    stop signal before the search could save its state exit 130/143."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return int(main(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # Before Tune's loop (Ray starting, teachers training) or a second signal inside it: stop at once.
        print(f"stopped by {driver.received() or 'SIGINT'} before the search could save its state; "
              "a search that had started continues from its last saved state with resume=true", file=sys.stderr)
        return driver.exit_code()


# --- the search commands: Hydra-style overrides -------------------------------------------------------------
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



def answer_help_or_cfg(line: CommandLine, command: str) -> bool:
    """Print `--help` or `--cfg job` for `line` when it asks for one (True: answered, the command exits 0)."""
    if line.mode == "help":
        print(render_help(compose_config(line.overrides), command=command), end="")
    elif line.mode == "cfg":
        print(render_cfg_job(load_config(line.overrides)), end="")
    return line.mode in ("help", "cfg")

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



def train_field_allowed(name: str) -> str:
    """Allowed values of a TrainConfig field from its metadata and the registries ('' when any value of its type)."""
    fld = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    if "choices" in fld.metadata:
        return ", ".join(fld.metadata["choices"])
    if "range" in fld.metadata:
        lo, hi, lo_open = fld.metadata["range"]
        parts = ([f"{'>' if lo_open else '>='}{lo:g}"] if lo is not None else []) + (
            [f"<={hi:g}"] if hi is not None else [])
        return " and ".join(parts)
    registries = {"dataset": list(DATASETS), "student": MODELS.names(), "method": METHODS.names(),
                  "teacher": TEACHERS.names() + ["none"]}
    return ", ".join(registries.get(name, []))


# --- rendering ----------------------------------------------------------------------------------------------
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
    allowed = {"space": list_spaces(), "profile": profiles()}
    profile = cfg.get("profile_name", "paper")
    meanings = search_key_docs()
    top = []
    for key, _ in search_keys():
        default = show(profile if key == "profile" else _value_at(cfg, key))
        meaning = meanings[key]
        if key in allowed:
            meaning += f"; allowed: {', '.join(allowed[key])}"
        top.append((key, default, meaning))
    docs = field_docs(TrainConfig)
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


def render_cfg_job(cfg: SearchConfig) -> str:
    """`--cfg job`: the resolved config as YAML (paths absolute, as Ray and the trials see them)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False, width=WIDTH)


def _value_at(cfg: Mapping[str, Any], dotted: str) -> Any:
    """cfg["a"]["b"] for "a.b"."""
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


# --- plain key=value commands (analysis.*) ------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One key=value option: how its text is parsed, its default, what it means, and the default as --help shows it."""

    parse: Callable[[str], Any]
    default: Any
    meaning: str
    shown: str = ""


def parse_options(argv: Sequence[str], options: Mapping[str, Option], required: Sequence[str] = ("name",)) -> dict[str, Any]:
    """Parse `key=value` words into a dict of every option (defaults filled in); raises SearchConfigError."""
    allowed = ", ".join(options)
    values: dict[str, Any] = {key: option.default for key, option in options.items()}
    for word in argv:
        key, sep, text = word.partition("=")
        if not sep:
            raise SearchConfigError(f"argument {word!r} is not key=value; allowed keys: {allowed}")
        if key not in options:
            raise SearchConfigError(f"unknown key {key!r}; allowed keys: {allowed}")
        values[key] = options[key].parse(text)
    missing = [key for key in required if values.get(key) is None]
    if missing:
        raise SearchConfigError(f"missing {missing[0]}=; allowed keys: {allowed}")
    return values


def render_options_help(command: str, summary: str, options: Mapping[str, Option], width: int = WIDTH) -> str:
    """--help of a key=value command: usage, what it does, and each key with its default and meaning."""
    rows = [(key, option.shown or str(option.default), option.meaning) for key, option in options.items()]
    lines = [f"usage: python -m {command} key=value ...  (--help, -h: this text)", "",
             textwrap.fill(" ".join(summary.split()), width), "", "keys (key, default, meaning):",
             *_rows(rows, width, key_w=max(len(k) for k in options))]
    return "\n".join(lines) + "\n"


def run_options_command(main: Callable[[dict[str, Any]], int | None], argv: Sequence[str] | None,
                        options: Mapping[str, Option], summary: str, command: str) -> int:
    """--help (exit 0), else parse the options and call main(values) under run_cli (one-line errors, exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(word in HELP_FLAGS for word in argv):
        print(render_options_help(command, summary, options), end="")
        return 0
    return run_cli(lambda words: main(parse_options(words, options)), argv)
