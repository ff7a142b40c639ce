"""The join clock: a node has `join_timeout_s` from the end of its launch to register, where
its provider may ask for longer (machines that boot or install take minutes)."""

import asyncio
import time

from contract.spec import JobSpec
from contract.states import NodeState
from coordinator.metrics import Metrics
from coordinator.nodes import NodeRegistry
from coordinator.providers.base import Provider
from coordinator.settings import CoorddSettings
from coordinator.store import JobRecord, Store


class NeverBoots(Provider):
    """A provider whose launch takes a while and whose machines never start an agent."""

    name = "local"

    def __init__(self, launch_s: float, join_timeout_s: float | None):
        self.launch_s, self.join_timeout_s = launch_s, join_timeout_s
        self.terminated: list[str] = []

    async def launch(self, nodes, job, spec):
        await asyncio.sleep(self.launch_s)

    async def terminate(self, node, *, lost):
        self.terminated.append(node.id)


async def _registry(tmp_path, provider: Provider) -> NodeRegistry:
    settings = CoorddSettings(state_dir=tmp_path, join_timeout_s=60)
    store = await Store.open(tmp_path / "coord.db")
    return NodeRegistry(store, settings, {"local": provider}, lambda *_: None, Metrics())


async def _lost_after(registry: NodeRegistry, provider: NeverBoots) -> float:
    spec = JobSpec(name="j", run="true")
    job = JobRecord(id="j-1", name="j", spec_json=spec.to_json())
    started = time.monotonic()
    [view] = await registry.acquire(job, spec, 1)
    launched = time.monotonic()
    assert launched - started >= provider.launch_s
    while registry.nodes[view.id].state == NodeState.JOINING:
        await registry._check(time.monotonic())
        await asyncio.sleep(0.05)
        assert time.monotonic() - launched < 30, "never timed out"
    return time.monotonic() - launched


async def test_the_clock_starts_when_the_launch_ends_and_the_provider_sets_it(tmp_path):
    provider = NeverBoots(launch_s=1.0, join_timeout_s=0.5)
    registry = await _registry(tmp_path, provider)
    try:
        waited = await _lost_after(registry, provider)
        # lost 0.5 s after the launch ended (not counted from the record's creation, which
        # would have lost it at once; not the 60 s coordd default)
        assert 0.4 < waited < 5
        node = next(iter(registry.nodes.values()))
        assert node.state == NodeState.LOST
        await asyncio.sleep(0.1)  # terminate runs as a task
        assert provider.terminated == [node.id]
    finally:
        await registry.store.close()
