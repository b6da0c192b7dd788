"""A tiny `key=value` command-line parser shared by analysis.finalize and analysis.report (no Hydra here)."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trainables import paths

DEFAULT_TRACKING_DB = "mlruns.db"


class UsageError(ValueError):
    """A request the command cannot serve as asked; the message is one line and the command exits with status 2."""


class CliError(UsageError):
    """A bad command line (unknown key, bad value, missing name=)."""


class ExperimentNotFoundError(UsageError, LookupError):
    """No MLflow experiment of that name; the message lists the experiments that exist."""


def tracking_uri(uri: str | None, base: Path | None = None) -> str:
    """None -> sqlite:///<cwd>/mlruns.db; a relative sqlite path is made absolute; other URIs pass through."""
    base = base or Path.cwd()
    if not uri:
        return f"sqlite:///{(base / DEFAULT_TRACKING_DB).resolve()}"
    return paths.absolute_tracking_uri(uri, base)


def _int(key: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise CliError(f"{key}={text!r} must be an integer") from None
        if value < 1:
            raise CliError(f"{key}={value} must be >= 1")
        return value

    return parse


def _choice(key: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise CliError(f"{key}={text!r} is not allowed; allowed: {', '.join(choices)}")
        return text

    return parse


def _text(key: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            raise CliError(f"{key}= needs a value")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """One key=value option: how its text is parsed, its default, what it means, and the default as --help shows it."""

    parse: Callable[[str], Any]
    default: Any
    meaning: str
    shown: str = ""


# Every key either command knows. Each command allows a subset; --help and validation both read this table.
KEYS: dict[str, Option] = {
    "name": Option(_text("name"), None, "the search's experiment name (as printed by search.run)",
                   "(required)"),
    "top_k": Option(_int("top_k"), 3, "how many of the best trials by `select`: finalize evaluates them, report "
                    "highlights their learning curves"),
    "aa.n": Option(_int("aa.n"), 1000, "test images AutoAttack runs on (the first aa.n; the other columns use the "
                   "whole test set)"),
    "out": Option(_text("out"), None, "folder for report.md and the figures", "reports/<name>"),
    "tracking.uri": Option(_text("tracking.uri"), None, "MLflow tracking URI of the search; a relative sqlite path "
                           "is made absolute", f"sqlite:///<cwd>/{DEFAULT_TRACKING_DB}"),
    "compare": Option(_choice("compare", ("paper", "none")), "none", "paper: put the supplement's rows beside "
                      "matching settings; none: no comparison"),
    "device": Option(_text("device"), "auto", "where the final evaluation runs: auto (CUDA when present), cpu, "
                     "cuda, cuda:N; evaluation is fp32"),
    "select": Option(_text("select"), "best_val_pgd_acc", "the metric that ranks trials (a trial run's metric, "
                     "max unless the search minimised it): the best validation PGD accuracy by default"),
}
HELP_FLAGS = ("--help", "-h")


def render_help(command: str, summary: str, allowed: Sequence[str], width: int = 100) -> str:
    """--help of an analysis command: usage, what it does, and each allowed key with its default and meaning."""
    key_w, default_w = max(len(k) for k in allowed), 16
    indent = " " * (2 + key_w + 2 + default_w + 2)
    wrap = textwrap.TextWrapper(width=width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
    lines = [f"usage: python -m {command} key=value ...  (--help, -h: this text)", "",
             textwrap.fill(" ".join(summary.split()), width), "", "keys (key, default, meaning):"]
    for key in allowed:
        head, body = f"  {key:<{key_w}}  {_shown(key)}", wrap.wrap(KEYS[key].meaning)
        if len(head) < len(indent):  # the default fits its column: the meaning starts on the same line
            body[0] = head.ljust(len(indent)) + body[0][len(indent):]
        else:
            body.insert(0, head)
        lines += body
    return "\n".join(lines) + "\n"


def _shown(key: str) -> str:
    option = KEYS[key]
    return option.shown or str(option.default)


def parse_args(argv: Sequence[str], allowed: Sequence[str], required: Sequence[str] = ("name",)) -> dict[str, Any]:
    """Parse `key=value` words into a dict of every allowed key (defaults filled in); raises CliError."""
    values: dict[str, Any] = {key: KEYS[key].default for key in allowed}
    for word in argv:
        key, sep, text = word.partition("=")
        if not sep:
            raise CliError(f"argument {word!r} is not key=value; allowed keys: {', '.join(allowed)}")
        if key not in allowed:
            raise CliError(f"unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        values[key] = KEYS[key].parse(text)
    missing = [key for key in required if values.get(key) is None]
    if missing:
        raise CliError(f"missing {missing[0]}=; allowed keys: {', '.join(allowed)}")
    if "tracking.uri" in values:
        values["tracking.uri"] = tracking_uri(values["tracking.uri"])
    return values


def run_main(main: Callable[[Mapping[str, Any]], int | None], argv: Sequence[str] | None,
             allowed: Sequence[str]) -> int:
    """Parse argv, set up logging, call main(args); --help prints the keys (exit 0); usage errors print one line to stderr and return 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(word in HELP_FLAGS for word in argv):
        module = sys.modules.get(main.__module__)
        spec = getattr(module, "__spec__", None)  # under `python -m`, __module__ is "__main__"
        command = spec.name if spec is not None else main.__module__
        summary = ((module.__doc__ if module else None) or "").strip().split("\n\n")[0]
        print(render_help(command, summary, allowed), end="")
        return 0
    try:
        args = parse_args(argv, allowed)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # MLflow draws a tqdm bar for every artifact download (a report reads a few small files): noise in a log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return int(main(args) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
