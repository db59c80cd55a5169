"""The package layering, enforced: components talk over protocols, never through each other's code.

`python/aioray/_private/` holds one package per process of the seed design
(`core_worker`, `raylet`, `gcs`, and the head's `dashboard`) and their shared leaf `common`. A component
imports only its own modules, `common`, the generated protocol code
(`aioray._proto`), the native store (`aioray._store`) and aioray's public
modules; `common` imports none of the components. No import cycle crosses a
package, and no hand-written Python file grows past 800 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "python" / "aioray"
COMPONENTS = ("core_worker", "raylet", "gcs", "dashboard")
# Private modules outside the components that one component may still use: the dashboard serves
# the Chrome trace that `aioray.timeline()` builds (a pure function of the state API's task rows).
ALSO_ALLOWED = {"dashboard": ("aioray._private.timeline",)}
LEAVES = ("aioray._proto", "aioray._store")
MAX_LINES = 800


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[str]:
    """Every module `path` imports, anywhere in it (function-level and TYPE_CHECKING imports too)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from pkg import mod` imports a module when `mod` is one.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def component_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["aioray", "_private"] and len(parts) > 2 and parts[2] in (*COMPONENTS, "common"):
        return parts[2]
    return None


def is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


def layering_violations(root: Path) -> list[str]:
    modules = {module_name(p, root): p for p in root.rglob("*.py") if "_proto" not in p.parts}
    problems = []
    for name, path in sorted(modules.items()):
        mine = component_of(name)
        if mine is None:
            continue
        targets = set()
        for target in imports_of(path, root):
            if target not in modules and target.rpartition(".")[0] in modules:
                target = target.rpartition(".")[0]  # a name imported from a module: that module
            targets.add(target)
        for target in sorted(targets):
            if not target.startswith("aioray.") or target.startswith(LEAVES) or target == "aioray._private":
                continue
            theirs = component_of(target)
            if theirs == mine or (theirs == "common" and mine in COMPONENTS):
                continue
            if theirs is None and not is_private(target):
                continue  # a public module (aioray.exceptions)
            if target in ALSO_ALLOWED.get(mine, ()):
                continue
            problems.append(f"{name} imports {target}")
    return problems


def package_cycles(root: Path) -> list[list[str]]:
    """Strongly connected sets of modules that span more than one package."""
    modules = {module_name(p, root): p for p in root.rglob("*.py") if "_proto" not in p.parts}
    graph = {
        m: sorted({t for t in imports_of(p, root) if t in modules and t != m}) for m, p in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len({component_of(m) or "api" for m in scc}) > 1:
                found.append(sorted(scc))

    for m in graph:
        if m not in index:
            visit(m)
    return found


def test_components_import_only_common_protocols_and_public_modules() -> None:
    assert layering_violations(PACKAGE) == []


def test_no_import_cycle_crosses_a_package() -> None:
    assert package_cycles(PACKAGE) == []


def test_no_hand_written_python_file_over_800_lines() -> None:
    too_long = {
        str(p.relative_to(REPO)): n
        for p in REPO.glob("**/*.py")
        if not ({"_proto", ".venv", ".bench", "target", ".git"} & set(p.parts))  # .bench: Ray's venv
        and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "aioray"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_check_catches_a_component_importing_another(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "exceptions.py": "",
            "_private/__init__.py": "",
            "_private/common/__init__.py": "",
            "_private/common/ids.py": "",
            "_private/raylet/__init__.py": "",
            "_private/raylet/spill.py": "from aioray._private.common import ids\nfrom aioray.exceptions import X\n",
            "_private/core_worker/__init__.py": "",
            "_private/core_worker/writer.py": "from aioray._private.raylet.spill import THRESHOLD\n",
            "_private/gcs/__init__.py": "",
            "_private/gcs/server.py": "from .. import api\n",
            "_private/api.py": "",
        },
    )
    assert layering_violations(root) == [
        "aioray._private.core_worker.writer imports aioray._private.raylet.spill",
        "aioray._private.gcs.server imports aioray._private.api",
    ]


def test_the_check_catches_a_cycle_across_packages(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "_private/__init__.py": "",
            "_private/common/__init__.py": "",
            "_private/common/ids.py": "from aioray._private import api\n",
            "_private/api.py": "from aioray._private.common import ids\n",
        },
    )
    assert package_cycles(root) == [["aioray._private.api", "aioray._private.common.ids"]]
