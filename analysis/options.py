"""The options of the analysis commands (`analysis.finalize`, `analysis.report`): one table of key=value options.

Parsing, `--help` and the one-line errors are search.cli's, as for every command of the project.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from search.cli import Option, parse_options, run_options_command
from search.config import SearchConfigError
from trainables import paths

DEFAULT_TRACKING_DB = "mlruns.db"


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
            raise SearchConfigError(f"{key}={text!r} must be an integer") from None
        if value < 1:
            raise SearchConfigError(f"{key}={value} must be >= 1")
        return value

    return parse


def _choice(key: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise SearchConfigError(f"{key}={text!r} is not allowed; allowed: {', '.join(choices)}")
        return text

    return parse


def _text(key: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            raise SearchConfigError(f"{key}= needs a value")
        return text

    return parse


# Every key either command knows. Each command allows a subset; --help and validation both read this table.
KEYS: dict[str, Option] = {
    "name": Option(_text("name"), None, "the search's experiment name (as printed by search.run)",
                   "(required)"),
    "top_k": Option(_int("top_k"), 3, "how many of the best trials by `select`: finalize evaluates them, report "
                    "highlights their learning curves"),
    "aa.n": Option(_int("aa.n"), 1000, "test images AutoAttack runs on (the first aa.n; the other columns use the "
                   "whole test set)"),
    "out": Option(_text("out"), None, "folder for report.md and the figures", "reports/<name>"),
    "tracking.uri": Option(tracking_uri, None, "MLflow tracking URI of the search; a relative sqlite path "
                           "is made absolute", f"sqlite:///<cwd>/{DEFAULT_TRACKING_DB}"),
    "compare": Option(_choice("compare", ("paper", "none")), "none", "paper: put the supplement's rows beside "
                      "matching settings; none: no comparison"),
    "device": Option(_text("device"), "auto", "where the final evaluation runs: auto (CUDA when present), cpu, "
                     "cuda, cuda:N; evaluation is fp32"),
    "select": Option(_text("select"), "best_val_pgd_acc", "the metric that ranks trials (a trial run's metric, "
                     "max unless the search minimised it): the best validation PGD accuracy by default"),
}


def parse_args(argv: Sequence[str], allowed: Sequence[str]) -> dict[str, Any]:
    """Parse `key=value` words for a command that takes the `allowed` keys (defaults filled in; tracking.uri made
    absolute); raises SearchConfigError."""
    return _with_tracking(parse_options(argv, {key: KEYS[key] for key in allowed}))


def run_command(main: Callable[[Mapping[str, Any]], int | None], argv: Sequence[str] | None,
                allowed: Sequence[str]) -> int:
    """--help, or parse argv and call main(values): errors as one line and exit 2 (search.cli.run_cli)."""
    module = sys.modules.get(main.__module__)
    spec = getattr(module, "__spec__", None)  # under `python -m`, __module__ is "__main__"
    command = spec.name if spec is not None else main.__module__
    summary = ((module.__doc__ if module else None) or "").strip().split("\n\n")[0]
    # MLflow draws a tqdm bar for every artifact download (a report reads a few small files): noise in a log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return run_options_command(lambda values: main(_with_tracking(values)), argv,
                               {key: KEYS[key] for key in allowed}, summary, command)


def _with_tracking(values: dict[str, Any]) -> dict[str, Any]:
    if "tracking.uri" in values and values["tracking.uri"] is None:
        values["tracking.uri"] = tracking_uri(None)
    return values
