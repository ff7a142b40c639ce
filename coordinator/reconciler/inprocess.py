"""What the reconciler tracks only for in-process jobs (torchft replicas that re-form in place),
kept apart from the core view: the members told to stop alone, the ranks that took part in a
step as replicas, and which replicas trained to the last step (and when the first did).

Every change is a pure method returning a new value; `reduce.evolve` calls them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class InProcessView:
    # Members told to stop their workers alone (leaving, or above the job's target).
    stopping_nodes: frozenset[str] = frozenset()
    # Ranks of the running worker generation that took part in a step as in-process replicas,
    # and (auto mode) whether all of them did (recorded once: then the job runs in-process
    # until its next restart).
    joined_ranks: frozenset[int] = frozenset()
    confirmed: bool = False
    # When a replica of the running worker generation first reported its last step, and the
    # ranks that did.
    finished_at: float | None = None
    finished_ranks: frozenset[int] = frozenset()

    def stopping(self, node_ids: Iterable[str]) -> InProcessView:
        return dataclasses.replace(self, stopping_nodes=self.stopping_nodes | set(node_ids))

    def dropped(self, node_ids: Iterable[str]) -> InProcessView:
        """Members dropped or restarted in place by a re-formation are no longer stopping."""
        return dataclasses.replace(self, stopping_nodes=self.stopping_nodes - set(node_ids))

    def joined(self, rank: int) -> InProcessView:
        return dataclasses.replace(self, joined_ranks=self.joined_ranks | {rank})

    def confirm(self) -> InProcessView:
        return dataclasses.replace(self, confirmed=True)

    def finished(self, rank: int, now: float) -> InProcessView:
        return dataclasses.replace(
            self, finished_at=now if self.finished_at is None else self.finished_at,
            finished_ranks=self.finished_ranks | {rank})
