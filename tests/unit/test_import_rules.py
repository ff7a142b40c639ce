"""Which of coord's packages may import which, read from the source with `ast` (imports inside
functions and under TYPE_CHECKING count too): the shared `contract` imports none of the others,
the agent, coordd and the trainer do not import each other, the client room imports none of
the daemon, the simulator only the reconciler and coordd's settings, and no modules import
each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "contract", "coordinator", "simulator", "trainer")
CLIENT = "coordinator.client"
SIMULATED = ("coordinator.reconciler", "coordinator.settings")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports (a package's own name when it imports one of
    its attributes)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def forbidden(source: str, target: str) -> bool:
    top, other = source.split(".")[0], target.split(".")[0]
    if source == CLIENT or source.startswith(CLIENT + "."):  # `coord simulate` runs the simulator
        return not (target.startswith(CLIENT) or other in ("contract", "simulator"))
    return {
        "agent": other in ("coordinator", "trainer"),
        "coordinator": other in ("agent", "trainer", "simulator"),
        # the reconciler on a simulated clock: never the daemon's I/O, the agent or a worker
        "simulator": other in ("agent", "trainer") or (other == "coordinator" and not target
                                                       .startswith(SIMULATED)),
        "trainer": other in ("agent", "coordinator"),
        "contract": other != "contract",
    }[top]


def test_no_package_imports_one_it_may_not():
    arrows = sorted(f"{source} -> {target}" for source, targets in graph().items()
                    for target in targets if forbidden(source, target))
    assert arrows == []


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in edges), None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        {"a", "b", "c"}]


def test_no_modules_import_each_other_in_a_circle():
    assert strongly_connected(graph()) == []
