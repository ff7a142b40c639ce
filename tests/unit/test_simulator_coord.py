"""coord's policies in the simulator, decided by the reconciler's real `decide`, on tiny
hand-made traces."""

from __future__ import annotations

import pytest

from contract.spec import load_job_file
from contract.states import JobState
from simulator.baselines import StaticTorchrun
from simulator.coord import CoordRun
from simulator.model import WorkloadModel
from simulator.run import simulate
from simulator.traces import Trace, TraceEvent, TraceMeta
from tests.integration.harness import ROOT

MODEL = WorkloadModel(step_time_s=1, steps_to_finish=100, checkpoint_every_steps=10, save_s=0,
                      restore_s=0, worker_cold_start_s=1, join_cold_s=1, reform_s=0.5,
                      detect_s=1, boot_median_s=10, boot_spread=0, notice_lead_s=20)


@pytest.fixture(scope="module")
def spec():
    return load_job_file(ROOT / "examples" / "elastic" / "job.toml")  # 3 nodes, min 2


def trace(*events: dict) -> Trace:
    return Trace("test", tuple(TraceEvent(**e) for e in events), TraceMeta(zones=1))


def run(spec, mode: str, events: Trace) -> CoordRun:
    coord = CoordRun(f"coord-{mode}", spec, mode, MODEL, events, 0)
    coord.result_ = coord.run(10_000)
    return coord


def test_in_process_loses_no_step_on_a_node_loss_and_beats_static_torchrun(spec):
    events = trace({"time": 36, "kind": "hard_failure", "node": 1})
    coord = run(spec, "inprocess", events)
    result = coord.result_
    assert coord.view.state == JobState.SUCCEEDED and result.finished
    assert result.steps_lost == 0 and coord.view.restarts == 0
    assert result.reformations == 2  # dropped the lost node, then took its replacement
    assert len(coord.view.members) == 3
    torchrun = StaticTorchrun(MODEL, events, 3, 0).run(10_000)
    assert torchrun.steps_lost == 5  # 25 steps done at 36 s, checkpoint 20
    assert result.time_to_finish_s < torchrun.time_to_finish_s
    assert result.longest_stall_s == pytest.approx(0.5)


def test_restart_mode_drains_a_noticed_node_without_losing_a_step(spec):
    coord = run(spec, "restart", trace({"time": 30, "kind": "spot_notice", "node": 0}))
    result = coord.result_
    assert coord.view.state == JobState.SUCCEEDED and result.steps_lost == 0
    assert result.reformations == 2  # without the leaving node, then back to full size
    assert coord.view.restarts == 0


def test_a_replacement_that_boots_while_the_group_stops_joins_the_same_restart(spec):
    """A graceful stop takes a step, then its commit and teardown (stop_s): a replacement
    asked for at the notice that registers meanwhile is in the next generation at once, with
    no scale-up restart later (as bench/simulate_validate.py saw on real nodes)."""
    model = MODEL.model_copy(update={"boot_median_s": 2, "stop_s": 1.5})
    events = trace({"time": 30, "kind": "spot_notice", "node": 0})
    coord = CoordRun("coord-restart", spec, "restart", model, events, 0)
    result = coord.run(10_000)
    assert result.finished and result.steps_lost == 0
    assert result.reformations == 1 and len(coord.view.members) == 3


def test_losing_every_node_at_once_falls_back_to_the_durable_checkpoint(spec):
    events = trace({"time": 36, "kind": "hard_failure", "zone": "z0"})
    for mode in ("inprocess", "restart"):
        coord = run(spec, mode, events)
        assert coord.view.state == JobState.SUCCEEDED
        assert coord.result_.steps_lost == 5, mode


def test_all_policies_run_on_the_same_trace_and_spares_cost_node_hours(spec):
    events = trace({"time": 36, "kind": "hard_failure", "node": 0},
                   {"time": 50, "kind": "spot_notice", "node": 2})
    results = {r.policy: r for r in simulate(spec, MODEL, events, [
        "coord-restart", "coord-inprocess", "coord-inprocess-spares", "torchrun", "relaunch",
        "on-demand"])}
    assert all(r.finished for r in results.values())
    spares, plain = results["coord-inprocess-spares"], results["coord-inprocess"]
    assert spares.time_to_finish_s < plain.time_to_finish_s  # the spare steps in at once
    assert spares.node_hours > plain.node_hours * 1.2        # and is paid for all along
    assert results["on-demand"].cost > 2 * results["torchrun"].cost


def test_a_long_run_keeps_only_the_jobs_own_nodes_in_the_view(spec):
    """Lost and handed-back nodes leave the view (NodesForgotten): each decision costs in
    proportion to the job's size, not to every node a two-week run ever had."""
    events = trace(*({"time": 20 + 8 * i, "kind": "hard_failure", "node": i % 3}
                     for i in range(10)))
    coord = run(spec, "inprocess", events)
    assert coord.view.state == JobState.SUCCEEDED and coord.result_.steps_lost == 0
    assert coord.result_.missed_events == 0  # 10 nodes lost, 13 launched in all
    assert len(coord.view.nodes) <= 4


def test_the_issues_rate_targets_are_met_with_the_default_model(spec):
    """`coord simulate --targets`: 1,000 nodes at 0.1 and at 1 failure per node-hour, and
    Llama 3's rate over the 54 days it was counted on."""
    from simulator.targets import scenario_targets
    verdicts = scenario_targets(spec, WorkloadModel())
    assert len(verdicts) == 3 and all(v.met for v in verdicts), [v.line() for v in verdicts]
