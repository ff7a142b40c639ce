"""How `coord nodes` and `coord status` show nodes when there are thousands: counts per state
and per job first, then one page of the table, and how to get the next."""

from __future__ import annotations

from contract.states import NodeState
from coordinator.client import cliout
from coordinator.client.sdktypes import NodePage

PAGE = 50           # rows `coord nodes` shows unless told otherwise
SUMMARY_FROM = 20   # more nodes than this: the counts come first
JOBS_SHOWN = 20     # rows of the per-job counts
MEMBERS_SHOWN = 8   # node ids `coord status JOB` names before it counts the rest


def state_counts(page: NodePage) -> str:
    """`9150 nodes: READY 10, LOST 9140`."""
    states = page.by_state()
    parts = [f"{state.value} {states[state]}" for state in NodeState if state in states]
    return f"{page.total} node{'s' * (page.total != 1)}: {', '.join(parts) or 'none'}"


def job_counts(page: NodePage) -> str:
    """A table: one row per job (the most nodes first), one column per state that occurs."""
    states = [s for s in NodeState if s in page.by_state()]
    jobs: dict[str, dict[NodeState, int]] = {}
    for (job, state), count in page.counts.items():
        jobs.setdefault(job, {})[state] = count
    order = sorted(jobs, key=lambda j: (-sum(jobs[j].values()), j))
    rows = [[job or "(no job)", *(str(jobs[job].get(s, 0)) for s in states)]
            for job in order[:JOBS_SHOWN]]
    header = ["JOB", *(s.value for s in states)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    if len(order) > JOBS_SHOWN:
        lines.append(f"... and {len(order) - JOBS_SHOWN} more jobs")
    return "\n".join(lines)


def render(page: NodePage, names: list[str], offset: int) -> str:
    """The summary (when there are many), the page's table, and where the next page is."""
    parts = []
    if page.total > SUMMARY_FROM or len(page.nodes) < page.total:
        parts += [state_counts(page), job_counts(page), ""]
    parts.append(cliout.table(page.nodes, cliout.NODE_FIELDS, names))
    end = offset + len(page.nodes)
    if end < page.total or offset:
        more = f"; next: --offset {end}" if end < page.total else ""
        parts.append(f"nodes {offset + 1 if page.nodes else offset}-{end} of {page.total}"
                     f"{more} (--limit 0: every one)")
    return "\n".join(parts)


def members(node_ids: list[str]) -> str:
    """A job's members for `coord status JOB`: every id when few, else the first and a count."""
    if len(node_ids) <= MEMBERS_SHOWN:
        return ", ".join(node_ids) or "-"
    return (f"{len(node_ids)} ({', '.join(node_ids[:MEMBERS_SHOWN])}, ...; "
            f"coord nodes --job shows them all)")
