"""The house rules of architecture.md, checked on the source: who may import ray, mlflow and hydra."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "spaces", "search", "analysis", "benchmarks")


def sources() -> list[Path]:
    """Every Python file of the project's packages (not the tests, not .venv)."""
    return [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports (anywhere in it, lazy imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package, forbidden, allowed_files", [
    ("trainables", {"ray", "mlflow", "hydra", "omegaconf", "search", "spaces", "analysis"}, {"ray_adapter.py"}),
    ("spaces", {"ray", "mlflow", "hydra", "omegaconf", "search", "analysis"}, set()),
    ("analysis", {"ray", "hydra", "omegaconf", "search"}, set()),
])
def test_layers_import_only_downward(package, forbidden, allowed_files):
    offenders = {}
    for path in (REPO / package).rglob("*.py"):
        if path.name in allowed_files:
            continue
        bad = imported_roots(path) & forbidden
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert not offenders, f"imports against architecture.md: {offenders}"


def test_the_ray_adapter_is_the_only_user_of_tunes_report_api():
    users = [p for p in sources() if "tune.report(" in p.read_text() or "get_checkpoint(" in p.read_text()]
    assert [p.relative_to(REPO).as_posix() for p in users] == ["trainables/ray_adapter.py"]


def test_nothing_uses_ray_train_in_a_tune_trainable():
    for p in sources():
        assert "ray.train" not in p.read_text(), p


def test_ray_starts_in_one_module():
    """Local start-up (loopback binding) and joining a cluster (its resources checked) happen in one place."""
    callers = [p.relative_to(REPO).as_posix() for p in sources() if "ray.init(" in _code(p)]
    assert callers == ["search/ray_runtime.py"]


def test_the_search_package_has_no_import_circle():
    """e.g. run.py <-> teachers.py once shared Ray start-up: imports in search/ (lazy ones included) form no cycle."""
    modules = {p.stem: p for p in (REPO / "search").glob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("search."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "search":
                deps |= {alias.name for alias in node.names}
        graph[name] = deps & set(modules)

    def cycle_from(start: str, node: str, seen: tuple) -> tuple | None:
        for dep in sorted(graph[node]):
            if dep == start:
                return seen + (dep,)
            if dep not in seen:
                found = cycle_from(start, dep, seen + (dep,))
                if found:
                    return found
        return None

    cycles = [c for c in (cycle_from(m, m, (m,)) for m in sorted(graph)) if c]
    assert not cycles, f"import circles in search/: {cycles[0]}"


def _code(path: Path) -> str:
    """Source without comments and docstrings (a docstring may mention ray.init())."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        documented = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
        if documented and ast.get_docstring(node):
            node.body = node.body[1:]
    return ast.unparse(tree)
