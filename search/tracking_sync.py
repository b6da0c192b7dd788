"""`python -m search.tracking_sync name=<search> [storage=ray_results] [tracking.uri=...]`: write the MLflow writes a
search queued while its tracking server did not answer.

A search with an http(s) `tracking.uri` never waits for the server: its writes queue in
`<storage>/<name>/mlflow-queue/` and a background thread writes them in order when the server answers
(search/tracking_queue.py). What is still queued when the search ends is written by the search's next `resume=true`,
or by this command, in the same order, on the same runs (found by tag). Run it when the search is not running.
Exit 0: everything written (or nothing was pending); 1: the server stopped answering part-way (run it again);
2: bad input, or the server does not answer at all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search import driver
from search.cli import Option, run_options_command
from search.config import SearchInputError
from search.storage import check_name, read_record, record_path
from search.tracking import (
    RunWriter,
    remote,
    server_answers,
    shorten_client_retries,
    transient_error,
)
from search.tracking_queue import Journal, WriteQueue, queue_folder
from trainables.paths import absolute, absolute_tracking_uri

log = logging.getLogger("search")

COMMAND = "search.tracking_sync"
SUMMARY = ("Writes the MLflow records a search queued while its tracking server did not answer (they wait in "
           "<storage>/<name>/mlflow-queue/), in order, on the search's runs; the search's next resume=true does the "
           "same. Run it when the search is not running. Exit 0: written (or nothing pending); 1: the server stopped "
           "answering part-way; 2: bad input or no server.")


OPTIONS: dict[str, Option] = {
    "name": Option(str, None, "the search's name (as printed by search.run)", "(required)"),
    "storage": Option(str, "ray_results", "the search's storage= (a folder, or s3://, gs://...)"),
    "tracking.uri": Option(str, None, "where to write them; default: the URI the search was "
                           "writing to, saved with its queue", "(the search's)"),
}


def main(args: Mapping[str, Any]) -> int:
    name = args["name"]
    check_name(name)
    driver.quiet_libraries(False)
    experiment_path = f"{absolute(args['storage'] or 'ray_results').rstrip('/')}/{name}"
    if read_record(experiment_path) is None:
        raise SearchInputError(f"there is no search named {name!r} at {experiment_path} (no "
                               f"{Path(record_path(experiment_path)).name}); check name= and storage=")
    folder = queue_folder(experiment_path)
    journal = Journal(folder)
    if not journal.segments():
        print(f"search {name}: no MLflow writes pending in {folder}")
        return 0
    uri = args["tracking.uri"] or journal.read_target().get("tracking_uri")
    if not uri:
        raise SearchInputError(f"the queued writes in {folder} do not say where they go; give tracking.uri=")
    uri = absolute_tracking_uri(uri)
    experiment = journal.read_target().get("experiment", name)
    if remote(uri):
        if not server_answers(uri, timeout=5):
            raise SearchInputError(f"tracking.uri={uri}: the MLflow server does not answer; start it and run this "
                                   f"again (the search's writes stay queued in {folder})")
        shorten_client_retries()
    writer = RunWriter(uri, experiment)
    queue = WriteQueue(journal, writer.apply, probe=lambda: not remote(uri) or server_answers(uri),
                       transient=transient_error, target=uri)
    total = queue.replayed
    left = queue.flush()
    if left:
        print(f"search {name}: wrote {total - left} of {total} queued MLflow write(s) to {uri}; the server stopped "
              f"answering, {left} still wait in {folder}: run this again when it answers")
        return 1
    skipped = f" ({queue.skipped} refused by MLflow and skipped)" if queue.skipped else ""
    print(f"search {name}: wrote {total} queued MLflow write(s) to {uri}{skipped}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_options_command(main, argv, OPTIONS, SUMMARY, COMMAND)


if __name__ == "__main__":
    sys.exit(cli())
