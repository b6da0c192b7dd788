"""A tiny `key=value` command-line parser shared by analysis.finalize and analysis.report (no Hydra here)."""

from __future__ import annotations

import logging
import sys
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


# Every key either command knows: (parser, default). Each command allows a subset.
KEYS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "name": (_text("name"), None),
    "top_k": (_int("top_k"), 3),
    "aa.n": (_int("aa.n"), 1000),
    "out": (_text("out"), None),
    "tracking.uri": (_text("tracking.uri"), None),
    "compare": (_choice("compare", ("paper", "none")), "none"),
    "device": (_text("device"), "auto"),
    "select": (_text("select"), "best_val_pgd_acc"),
}


def parse_args(argv: Sequence[str], allowed: Sequence[str], required: Sequence[str] = ("name",)) -> dict[str, Any]:
    """Parse `key=value` words into a dict of every allowed key (defaults filled in); raises CliError."""
    values: dict[str, Any] = {key: KEYS[key][1] for key in allowed}
    for word in argv:
        key, sep, text = word.partition("=")
        if not sep:
            raise CliError(f"argument {word!r} is not key=value; allowed keys: {', '.join(allowed)}")
        if key not in allowed:
            raise CliError(f"unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        values[key] = KEYS[key][0](text)
    missing = [key for key in required if values.get(key) is None]
    if missing:
        raise CliError(f"missing {missing[0]}=; allowed keys: {', '.join(allowed)}")
    if "tracking.uri" in values:
        values["tracking.uri"] = tracking_uri(values["tracking.uri"])
    return values


def run_main(main: Callable[[Mapping[str, Any]], int | None], argv: Sequence[str] | None,
             allowed: Sequence[str]) -> int:
    """Parse argv, set up logging, call main(args); usage errors print one line to stderr and return 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv, allowed)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(main(args) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
