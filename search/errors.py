"""How the command line reports bad input: one line, the key, what is allowed, a non-zero exit."""

from __future__ import annotations

import logging
import sys
from typing import Callable

log = logging.getLogger("search")

EXIT_BAD_INPUT = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is already a complete one-line explanation for a person."""
    from search.config import SearchConfigError
    from spaces import SpaceError
    from trainables.config import ConfigError
    from trainables.data import DatasetNotFoundError
    from trainables.registry import UnknownNameError
    from trainables.teachers import TeacherLoadError

    return (SearchConfigError, SpaceError, ConfigError, DatasetNotFoundError, UnknownNameError,
            TeacherLoadError, SearchInputError)


class SearchInputError(ValueError):
    """Something the person asked for cannot be done (e.g. resume of a search that does not exist)."""


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a user error becomes 'error: <one line>' on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = sys.argv[1:] if argv is None else argv
    try:
        return main(args)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        from search import interrupt

        # Before Tune's loop (Ray starting, teachers training) or a second signal inside it: stop at once.
        print(f"stopped by {interrupt.received() or 'SIGINT'} before the search could save its state; "
              "a search that had started continues from its last saved state with resume=true", file=sys.stderr)
        return interrupt.exit_code()
