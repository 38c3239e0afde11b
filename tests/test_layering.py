"""Data flows one way: a module imports only from its own stage or the stages before it.

Every import counts, the lazy ones inside functions too: a lazy import is still a dependency,
only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ftml"

# In data-flow order. A module may import from its own stage and those above it.
STAGES: list[tuple[str, set[str]]] = [
    ("base", {"ftml", "errors", "events", "config", "clock", "codec", "_forest_kernel",
              "_window_kernel"}),
    ("io", {"io", "sources", "simulate", "logs"}),
    ("features", {"features"}),
    ("detect", {"detect", "fast"}),
    ("diagnose", {"diagnose", "diagnoser", "incidents"}),
    ("model", {"bundle"}),
    ("pipeline core", {"pipeline"}),
    ("recover", {"playbooks", "audit", "recover"}),
    ("sinks", {"sinks"}),
    ("drivers and use cases", {"api", "distributed", "watch", "record", "evaluate"}),
    ("reports and CLI", {"report", "demo", "cli", "__main__"}),
]
RANK = {name: i for i, (_, names) in enumerate(STAGES) for name in names}


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py")) + sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def _ftml_imports(path: Path) -> set[str]:
    """The ftml modules a file imports (first component under ``ftml``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ftml":
                    out.add(parts[1] if len(parts) > 1 else "ftml")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "ftml":
                continue
            if len(parts) > 1:
                out.add(parts[1])
            else:  # from ftml import api, __version__
                out.update(a.name if a.name in RANK else "ftml" for a in node.names)
    return out


def test_every_module_has_a_stage():
    missing = [m for m in _modules() if m not in RANK and m != "__init__"]
    assert not missing, f"put these modules in a stage of STAGES: {missing}"


@pytest.mark.parametrize("module", [m for m in _modules() if m != "__init__"])
def test_module_imports_only_from_earlier_stages(module):
    path = PACKAGE / f"{module}.py"
    if not path.exists():
        path = PACKAGE / module / "__init__.py"
    files = [path] if path.name != "__init__.py" else sorted(path.parent.rglob("*.py"))
    mine = RANK[module]
    bad = sorted({(f.name, imp) for f in files for imp in _ftml_imports(f)
                  if imp in RANK and RANK[imp] > mine})
    assert not bad, (f"{module} ({STAGES[mine][0]}) imports from later stages: "
                     + ", ".join(f"{imp} ({STAGES[RANK[imp]][0]}) in {f}" for f, imp in bad))


def test_the_check_sees_a_backward_import(tmp_path):
    # The check itself can fail: an io module that imports the watch loop is caught.
    f = tmp_path / "io.py"
    f.write_text("def f():\n    from ftml.watch import Watcher\n    from ftml import api\n")
    assert _ftml_imports(f) == {"watch", "api"}


# --------------------------------------------------------------------------- inside a package

#: A stage that is a package: its modules in flow order. Each imports only from those before it
#: (lazy imports too), and ``__init__`` re-exports them.
PACKAGE_FLOWS: dict[str, list[str]] = {
    "features": ["statistics", "views", "windows", "counters", "screen", "baseline", "level",
                 "featurizer"],
    "detect": ["scorer", "forest", "builder", "gate", "threshold"],
    "io": ["contract", "files", "tables", "timestamps", "entities", "rows", "grid", "metrics",
           "incidents", "writers"],
    "playbooks": ["text", "templates", "schema", "reader", "loading", "checks"],
    "distributed": ["cluster", "index", "slices", "logs", "scoring", "training"],
    "simulate": ["catalog", "worlds", "fleet", "logs", "files"],
    "pipeline": ["progress", "plan", "screen", "scoring", "training"],
    "incidents": ["topology", "trail", "grouping", "rank", "groups", "live"],
    # The parts of the online loop never reach the loop (``loop``: Watcher) composed of them.
    "watch": ["waker", "config", "results", "health", "metrics", "buffers", "book", "alerts",
              "scoring", "polling", "workers", "checkpoint", "server", "lifecycle", "loop"],
}


def _package_imports(path: Path, package: str) -> set[str]:
    """The modules of ``ftml.<package>`` a file imports (second component under it)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    prefix = f"ftml.{package}."
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                     if node.module == f"ftml.{package}" else [])
        else:
            continue
        out.update(n[len(prefix):].split(".")[0] for n in names if n.startswith(prefix))
    return out


@pytest.mark.parametrize("package", sorted(PACKAGE_FLOWS))
def test_package_modules_import_only_the_ones_before_them(package):
    flow = PACKAGE_FLOWS[package]
    modules = sorted(p.stem for p in (PACKAGE / package).glob("*.py") if p.stem != "__init__")
    assert sorted(flow) == modules, f"give each module of ftml/{package}/ its place in the flow"
    bad = {m: sorted(imp for imp in _package_imports(PACKAGE / package / f"{m}.py", package)
                     if imp not in flow or flow.index(imp) >= flow.index(m))
           for m in flow}
    assert not any(bad.values()), f"ftml.{package}: imports against the flow: {bad}"


def test_the_package_flow_check_sees_a_backward_import(tmp_path):
    f = tmp_path / "statistics.py"
    f.write_text("def f():\n    from ftml.features.featurizer import Featurizer\n"
                 "import ftml.features.level\nfrom ftml.features import windows\n")
    assert _package_imports(f, "features") == {"featurizer", "level", "windows"}


def test_the_watch_loop_is_made_of_every_job_module():
    # Watcher's bases: a job's module that the loop does not import is a job left undone.
    assert _package_imports(PACKAGE / "watch" / "loop.py", "watch") >= {
        "alerts", "scoring", "polling", "workers", "checkpoint", "server", "lifecycle"}
