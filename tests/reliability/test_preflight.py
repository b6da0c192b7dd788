"""Bad input is refused before Ray starts: one line on stderr, exit code 2, and nothing written.

Each case runs the command's `main` in-process (no Ray, seconds) from an empty folder and checks that
the folder is exactly as before: no mlruns.db, no storage folder, no MLflow experiment, no teacher.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch

from search.plan import new_record
from search.storage import write_record
from search.cli import run_cli
from search.plan import plan_search
from search.run import main

from commands import client, run_search

from .conftest import TEACHER, TINY


def tree(folder: Path) -> dict[str, tuple]:
    """Every path under folder with its size and mtime (what 'nothing written' compares)."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def refused(argv: list[str], folder: Path, capsys) -> str:
    """Run the command in `folder`; assert exit 2, one stderr line, nothing written; return the line."""
    capsys.readouterr()  # what the test's own setup printed
    before = tree(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = run_cli(main, argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert tree(folder) == before, "the refused command wrote something"
    return err[len("error: "):]


@pytest.fixture
def folder(tmp_path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


# --- names -----------------------------------------------------------------------------------
RULE = "allowed: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters"


@pytest.mark.parametrize("name", ["../../x", "\"it's\"", "a/b", "..", ".hidden", "''", "x" * 129, "'a b'"])
def test_unsafe_names_are_refused_with_the_allowed_pattern(name, folder, capsys):
    line = refused(["space=alpha", *TINY, f"name={name}"], folder, capsys)
    assert line.startswith("name=") and RULE in line


def test_an_apostrophe_hydra_cannot_parse_is_one_line(folder, capsys):
    line = refused(["space=alpha", *TINY, "name=it's"], folder, capsys)
    assert "name=it's" in line


# --- resources -------------------------------------------------------------------------------
def gpus_here() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize("overrides, expected", [
    ([f"trial.gpus={gpus_here() + 2}"],
     f"trial.gpus={gpus_here() + 2} can never run: this machine has {gpus_here()} GPU"),
    (["trial.cpus=999"], f"trial.cpus=999 can never run: this machine has {os.cpu_count()} CPU"),
    (["ray.num_cpus=1", "trial.cpus=2"], "trial.cpus=2 can never run: this machine (ray.num_cpus=1) has 1 CPU;"),
    (["trial.gpus=1.5"], "trial.gpus=1.5 is not allowed; allowed: a fraction <= 1 or a whole number"),
    (["trial.cpus=-1"], "trial.cpus=-1 must be a number >= 0"),
    (["train.device=cuda", "trial.gpus=0"], "train.device=cuda needs a GPU per trial but trial.gpus=0"),
])
def test_resources_that_can_never_be_satisfied_are_refused(overrides, expected, folder, capsys):
    line = refused(["space=alpha", *TINY, *overrides], folder, capsys)
    assert line.startswith(expected), line


# --- where results go --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unwritable_storage_and_tracking_are_refused_even_for_root(folder, capsys):
    blocker = folder / "afile"
    blocker.write_text("a regular file")
    (folder / "dir.db").mkdir()
    cases = [
        (f"storage={blocker}/runs", f"storage={blocker}/runs: cannot create {blocker}/runs/s: {blocker} is a file"),
        ("storage=/proc/rslad-runs", "storage=/proc/rslad-runs: cannot write in /proc:"),
        (f"tracking.uri=sqlite:///{blocker}/m.db", f"tracking.uri=sqlite:///{blocker}/m.db: {blocker} is not a folder"),
        ("tracking.uri=sqlite:////proc/rslad/m.db", "tracking.uri=sqlite:////proc/rslad/m.db: cannot write in /proc:"),
        (f"tracking.uri=sqlite:///{folder}/dir.db",
         f"tracking.uri=sqlite:///{folder}/dir.db: {folder}/dir.db is not a file"),
    ]
    for override, expected in cases:
        assert refused(["space=alpha", *TINY, "name=s", override], folder, capsys).startswith(expected)
    port = free_port()
    line = refused(["space=alpha", *TINY, f"tracking.uri=http://127.0.0.1:{port}"], folder, capsys)
    assert line.startswith(f"tracking.uri=http://127.0.0.1:{port}: the MLflow server does not answer (")


# --- data and teachers -------------------------------------------------------------------------
def test_missing_or_corrupt_cifar_is_refused_before_ray(folder, capsys):
    line = refused(["space=alpha", "tracking.enabled=false"], folder, capsys)
    assert line.startswith(f"cifar10 not found in {folder}/data ({folder}/data/cifar-10-batches-py/data_batch_1 "
                           "is missing); set train.download=true")
    batches = folder / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"not cifar")
    assert "data_batch_1 is corrupt" in refused(["space=alpha", "tracking.enabled=false"], folder, capsys)


def write_teacher_file(kind: str, path: Path, good: Path) -> None:
    """A teacher file broken in one way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "wrong architecture":
        from trainables.models import build_model
        from trainables.teachers import save_teacher_checkpoint

        save_teacher_checkpoint(build_model("cnn_small", num_classes=10, in_channels=1), path, TEACHER, {})
    elif kind == "a pickled program":
        with open(path, "wb") as f:
            pickle.dump({"state_dict": Exploit(str(path.parent / "PWNED"))}, f)


class Exploit:
    """Unpickling this runs a command: weights_only loading must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind, expected", [
    ("empty", "cannot read teacher weights {path}: the file is empty (0 bytes)"),
    ("truncated", "cannot read teacher weights {path}: RuntimeError: PytorchStreamReader failed"),
    ("random bytes", "cannot read teacher weights {path}: "),
    ("wrong architecture", f"architecture mismatch: {{path}} does not fit teacher '{TEACHER}' (arch cnn_medium"),
    ("a pickled program", "cannot read teacher weights {path}: "),
])
def test_a_broken_teacher_file_is_refused_even_where_teachers_are_trained(kind, expected, trained_teacher,
                                                                          folder, capsys):
    # profile=smoke trains MISSING teachers: a broken file must not be trained over, nor reach a trial
    path = folder / "teachers" / f"{TEACHER}.pt"
    write_teacher_file(kind, path, trained_teacher / f"{TEACHER}.pt")
    line = refused(["space=alpha", *TINY], folder, capsys)
    assert line.startswith(expected.format(path=path)), line
    assert not (folder / "teachers" / "PWNED").exists()


def test_a_missing_paper_teacher_says_how_to_provide_it(folder, capsys):
    line = refused(["space=alpha", "tracking.enabled=false", "train.download=true"], folder, capsys)
    assert line.startswith(f"teacher 'wrn34_10_trades' has no weights at {folder}/teachers/wrn34_10_trades.pt")
    assert "Zhang2019Theoretically" in line


# --- names already used, resume of what is not there or not the same ---------------------------
def fake_search(folder: Path, argv: list[str]) -> dict:
    """A search as a started one leaves it, without Ray: tuner.pkl and our description in its folder."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        plan = plan_search(argv)
    finally:
        os.chdir(cwd)
    Path(plan.experiment_path).mkdir(parents=True)
    (Path(plan.experiment_path) / "tuner.pkl").write_bytes(b"")
    saved = new_record(plan)
    write_record(plan.experiment_path, saved)
    return saved


def fake_experiment(folder: Path, name: str, tags: dict) -> None:
    c = client(folder / "mlruns.db")
    c.create_experiment(name, tags=tags)


def test_resume_of_an_unknown_name_is_refused(folder, capsys):
    line = refused(["space=alpha", *TINY, "name=nope", "resume=true"], folder, capsys)
    assert line == (f"resume=true but there is no search to continue at {folder}/ray_results/nope "
                    "(check name= and storage=)")


def test_a_new_search_with_an_existing_name_is_refused(folder, capsys):
    fake_search(folder, ["space=alpha", *TINY, "name=taken"])
    line = refused(["space=alpha", *TINY, "name=taken"], folder, capsys)
    assert line == (f"a search named 'taken' already exists at {folder}/ray_results/taken; "
                    "continue it with resume=true or pick another name=")


def test_a_name_used_by_a_search_in_other_storage_is_refused(folder, capsys):
    fake_experiment(folder, "shared", {"rslad.storage": "/elsewhere/shared", "rslad.search_id": "0" * 32})
    db = f"sqlite:///{folder}/mlruns.db"
    line = refused(["space=alpha", *TINY, "name=shared"], folder, capsys)
    assert line == (f"name='shared' is already used in the tracking store {db} by the search stored at "
                    "/elsewhere/shared; pick another name=")
    # resume=true of a saved search whose MLflow experiment belongs to another search: refused too
    fake_search(folder, ["space=alpha", *TINY, "name=shared"])
    line = refused(["space=alpha", *TINY, "name=shared", "resume=true"], folder, capsys)
    assert line.startswith(f"name='shared' is already used in the tracking store {db} by another search")
    assert len(client(folder / "mlruns.db").search_experiments()) == 2  # Default + shared: nothing added


def test_a_deleted_experiment_name_is_refused(folder, capsys):
    fake_experiment(folder, "gone", {})
    c = client(folder / "mlruns.db")
    c.delete_experiment(c.get_experiment_by_name("gone").experiment_id)
    line = refused(["space=alpha", *TINY, "name=gone"], folder, capsys)
    assert line.startswith("name='gone' belongs to a deleted MLflow experiment")


def test_resume_with_other_settings_names_every_key_that_differs(folder, capsys):
    fake_search(folder, ["space=alpha", *TINY, "name=s1", "num_samples=4"])
    line = refused(["space=rsl_source", *TINY, "name=s1", "resume=true", "num_samples=4", "train.lr=0.1"],
                   folder, capsys)
    assert line.startswith("resume=true: search 's1' was started with other settings: ")
    assert "space (alpha -> rsl_source)" in line and "train.lr (0.05 -> 0.1)" in line
    assert "space file (" in line and "num_samples" not in line


def test_resume_from_a_folder_others_can_write_is_refused(folder, capsys):
    fake_search(folder, ["space=alpha", *TINY, "name=s1"])
    exp = folder / "ray_results" / "s1"
    exp.chmod(0o777)
    line = refused(["space=alpha", *TINY, "name=s1", "resume=true"], folder, capsys)
    assert line.startswith(f"refusing to resume from {exp}: others can write it (mode 777")


def test_the_real_command_refuses_in_seconds(folder):
    """The same refusal through `python -m search.run`: exit 2, one line, no traceback."""
    proc = run_search(folder, "space=alpha", *TINY, "trial.cpus=999", timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: trial.cpus=999 can never run: this machine has {os.cpu_count()} CPUs; allowed: trial.cpus <= "
        f"{os.cpu_count()}"]
    assert list(folder.iterdir()) == []


# --- the Optuna study ------------------------------------------------------------------------
def test_a_new_search_whose_optuna_study_name_exists_is_refused(folder, capsys):
    import optuna

    url = f"sqlite:///{folder}/optuna.db"
    optuna.create_study(study_name="taken", storage=url)  # e.g. left from a search whose folders were removed
    line = refused(["space=alpha", *TINY, "name=taken"], folder, capsys)
    assert line == (f"an Optuna study named 'taken' already exists in {url}; pick another name= or remove it with "
                    f"optuna delete-study --study-name taken --storage {url}")
    refused(["space=alpha", *TINY, "name=free", f"optuna.storage={folder}/x.db"], folder, capsys)  # not a URL
    assert not (folder / "x.db").exists()


def test_resume_of_a_search_without_its_description_is_refused(folder, capsys):
    fake_search(folder, ["space=alpha", *TINY, "name=old"])
    (folder / "ray_results" / "old" / "rslad-search.json").unlink()
    line = refused(["space=alpha", *TINY, "name=old", "resume=true"], folder, capsys)
    assert line.startswith(f"resume=true: search 'old' at {folder}/ray_results/old has no description")
