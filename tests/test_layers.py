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
    ("analysis", {"ray", "hydra", "omegaconf"}, set()),
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


def test_analysis_uses_only_the_command_line_of_search():
    """One command-line system: analysis.* parse, --help and report errors through search.cli, and nothing else of search."""
    used = {name for path in (REPO / "analysis").rglob("*.py") for name in project_imports(path) if name.startswith("search")}
    assert used <= {"search.cli", "search.config"}, used


def test_the_ray_adapter_is_the_only_user_of_tunes_report_api():
    users = [p for p in sources() if "tune.report(" in p.read_text() or "get_checkpoint(" in p.read_text()]
    assert [p.relative_to(REPO).as_posix() for p in users] == ["trainables/ray_adapter.py"]


def test_nothing_uses_ray_train_in_a_tune_trainable():
    for p in sources():
        assert "ray.train" not in p.read_text(), p


def test_ray_starts_in_one_module():
    """Local start-up (loopback binding) and joining a cluster (its resources checked) happen in one place."""
    callers = [p.relative_to(REPO).as_posix() for p in sources() if "ray.init(" in _code(p)]
    assert callers == ["search/driver.py"]


def module_name(path: Path) -> str:
    """trainables/methods/base.py -> trainables.methods.base (a package's __init__ is the package)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, lazy: bool = True) -> set[str]:
    """The project's modules `path` imports at run time (`import a.b`, `from a.b import c` naming module a.b.c when
    it is one); imports under `if TYPE_CHECKING:` are not run and do not count; lazy=False: module level only."""
    known = {module_name(p) for p in sources()}
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    nodes = ast.walk(tree) if lazy else tree.body
    out = set()
    for node in nodes:
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            out |= subs or ({node.module} & known)
    return out


def test_no_import_circle_anywhere():
    """Module-level and lazy imports of the project's modules form no cycle (a package importing its own modules
    from __init__ aside)."""
    graph = {module_name(p): {m for m in project_imports(p) if not module_name(p).startswith(m + ".")}
             for p in sources()}

    def cycle_from(start: str, node: str, seen: tuple) -> tuple | None:
        for dep in sorted(graph.get(node, ())):
            if dep == start:
                return seen + (dep,)
            if dep not in seen:
                found = cycle_from(start, dep, seen + (dep,))
                if found:
                    return found
        return None

    cycles = [c for c in (cycle_from(m, m, (m,)) for m in sorted(graph)) if c]
    assert not cycles, f"import circle: {' -> '.join(cycles[0])}"


def test_project_modules_are_imported_at_the_top():
    """Imports inside functions hide the dependency graph: only heavy libraries may be imported lazily."""
    hidden = {module_name(p): sorted(project_imports(p) - project_imports(p, lazy=False))
              for p in sources() if (REPO / "search") in p.parents or (REPO / "spaces") in p.parents}
    assert not {k: v for k, v in hidden.items() if v}


def _code(path: Path) -> str:
    """Source without comments and docstrings (a docstring may mention ray.init())."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        documented = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
        if documented and ast.get_docstring(node):
            node.body = node.body[1:]
    return ast.unparse(tree)
