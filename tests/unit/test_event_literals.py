"""Event kinds are named by their constants in contract/events.py, never spelt out elsewhere:
the code is read with `ast` and a kind written as a string literal outside that table fails
here, whether it is a known kind or a new one (a comparison with `.kind`, a `kind=` keyword,
an argument of an event writer). Tests may spell kinds out: they check what a user reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from contract import events as ev

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("agent", "bench", "contract", "coordinator", "examples", "scripts", "simulator",
           "trainer")
TABLE = ROOT / "contract" / "events.py"
# What looks like an event kind: `word.word` (every kind but "state" has a dot).
KIND_LIKE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
WRITERS = {"event", "events", "job_event", "on_event", "append_event"}
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _looks_like_kind(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (node.value == ev.STATE or bool(KIND_LIKE.match(node.value))))


def _log_names(tree: ast.AST) -> set[int]:
    """The ids of structlog event names (`log.info("slurm.poll_failed", ...)`): a namespace of
    their own, not the job's event log."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS and node.args):
            names.add(id(node.args[0]))
    return names


def _compared_with_kind(node: ast.Compare) -> list[ast.AST]:
    sides = [node.left, *node.comparators]
    if not any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides):
        return []
    return [c for s in sides for c in (getattr(s, "elts", None) or [s])]


def kind_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each event kind spelt out as a literal in `source`."""
    tree = ast.parse(source)
    logged, known = _log_names(tree), {k for k in ev.PAYLOADS if k != ev.STATE}
    found = []
    for node in ast.walk(tree):
        suspects: list[ast.AST] = []
        if isinstance(node, ast.Constant) and node.value in known and id(node) not in logged:
            suspects = [node]
        elif isinstance(node, ast.Compare):
            suspects = _compared_with_kind(node)
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            suspects = [k.value for k in node.keywords if k.arg == "kind"]
            suspects += node.args if name in WRITERS else []
        found += [(s.lineno, s.value) for s in suspects if _looks_like_kind(s)]
    return sorted(set(found))


def test_no_event_kind_is_spelt_out_outside_the_table():
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for package in SCANNED for path in sorted((ROOT / package).rglob("*.py"))
             if path != TABLE for line, text in kind_literals(path.read_text())]
    assert found == [], "use the constants of contract/events.py"


def test_the_scan_finds_a_kind_written_or_compared_as_a_literal():
    source = '''
if e.kind == "generation.started" or event.kind in ("brand.new", "state"):
    pass
await runner.event("brand.new", "message", payload)
await self.events(job.id, "provider.warning", message, ev.Notice())
AgentEvent(job_id=j, kind="node.leaving")
x = {"slurm.queued": 1}
log.info("slurm.submitted", node=n)          # a log line's name: not a job event
if trace_event.kind == "hard_failure": pass  # a simulator trace's kind: not a job event
'''
    assert kind_literals(source) == [
        (2, "brand.new"), (2, "generation.started"), (2, "state"), (4, "brand.new"),
        (5, "provider.warning"), (6, "node.leaving"), (7, "slurm.queued")]
