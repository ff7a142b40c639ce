"""`coord simulate`'s baselines on tiny hand-made traces, and its bad-input errors."""

from __future__ import annotations

import json

import pytest

from contract.spec import Overrides, load_job_file
from simulator.baselines import OnDemandOnly, StaticTorchrun, WholeClusterRelaunch
from simulator.errors import SimulationInputError
from simulator.model import WorkloadModel, load_model
from simulator.synth import SynthParams, generate, parse_params
from simulator.traces import Trace, TraceEvent, load_trace
from tests.integration.harness import ROOT

# Two nodes that boot in 10 s; 1 s steps, a checkpoint every 10 steps, nothing else costs time.
MODEL = WorkloadModel(step_time_s=1, steps_to_finish=100, checkpoint_every_steps=10, save_s=0,
                      restore_s=0, worker_cold_start_s=0, detect_s=0, boot_median_s=10,
                      boot_spread=0, notice_lead_s=20, spot_price_per_hour=1,
                      on_demand_price_per_hour=3)


def trace(*events: dict) -> Trace:
    return Trace("test", tuple(TraceEvent(**e) for e in events))


def hard(time: float, node: int = 0) -> dict:
    return {"time": time, "kind": "hard_failure", "node": node}


def test_static_torchrun_loses_exactly_the_steps_since_the_last_checkpoint_at_each_loss():
    # Training starts at 10 s. At 35 s 25 steps are done (checkpoint 20): 5 lost; the
    # replacement boots by 45 s. At 60 s 20 + 15 = 35 are done (checkpoint 30): 5 lost.
    result = StaticTorchrun(MODEL, trace(hard(35), hard(60, 1)), 2, 0).run(10_000)
    assert result.steps_lost == 10
    assert result.time_to_finish_s == pytest.approx(60 + 10 + 70)
    assert result.reformations == 2 and result.longest_stall_s == pytest.approx(10)


def test_whole_cluster_relaunch_replaces_every_node_on_one_loss():
    run = WholeClusterRelaunch(MODEL, trace(hard(35)), 2, 0)
    result = run.run(10_000)
    assert result.steps_lost == 5 and result.reformations == 1
    assert result.time_to_finish_s == pytest.approx(45 + 80)
    assert run.cloud._count == 4  # two nodes, then two new ones: the survivor went too
    assert result.node_hours == pytest.approx(2 * 125 / 3600)


def test_on_demand_only_ignores_spot_notices_and_capacity_and_pays_on_demand():
    events = trace({"time": 20, "kind": "spot_notice", "node": 0},
                   {"time": 30, "kind": "capacity", "count": 0})
    result = OnDemandOnly(MODEL, events, 2, 0).run(10_000)
    assert result.time_to_finish_s == pytest.approx(110) and result.steps_lost == 0
    assert result.node_hours == pytest.approx(2 * 110 / 3600)
    assert result.cost == pytest.approx(result.node_hours * 3)
    assert result.goodput == pytest.approx(100 / 110)
    spot = StaticTorchrun(MODEL, events, 2, 0).run(10_000)
    # Both taken (at 40 s and 50 s), after 30 steps: a checkpoint; no capacity after.
    assert spot.steps_lost == 0 and spot.progress == pytest.approx(0.3) and not spot.finished


@pytest.mark.parametrize(("name", "text", "says"), [
    ("bad.csv", "time,kind,node\n1,hard_failure,0\n2,meteor,1\n", ["bad.csv", "line 3", "kind"]),
    ("bad.csv", "kind,node\nhard_failure,0\n", ["bad.csv", "line 1", "time"]),
    ("bad.json", json.dumps({"events": [{"time": 1, "kind": "hard_failure", "node": 0},
                                        {"time": 2, "kind": "spot_notice"}]}),
     ["bad.json", "event 1", "exactly one of 'node' or 'zone'"]),
    ("bad.json", json.dumps({"data": [3, 2]}), ["bad.json", "metadata.gap_seconds"]),
    ("bad.json", json.dumps({"metadata": {"gap_seconds": 300}, "data": [3, -1]}),
     ["bad.json", "item 1", "count"]),
    ("bad.json", "{not json", ["bad.json", "not valid JSON"]),
])
def test_a_bad_trace_names_the_file_and_the_field_or_line(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SimulationInputError) as error:
        load_trace(path)
    for part in says:
        assert part in str(error.value)


def test_a_capacity_trace_becomes_capacity_events(tmp_path):
    path = tmp_path / "cap.json"
    path.write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": [5, 4, 6]}))
    loaded = load_trace(path)
    assert [(e.time, e.count) for e in loaded.events] == [(0, 5), (300, 4), (600, 6)]


def test_bad_model_values_and_synthetic_keys_name_the_key(tmp_path):
    with pytest.raises(SimulationInputError, match="--set: key 'step_time_s'"):
        load_model(None, ["step_time_s=-1"])
    with pytest.raises(SimulationInputError, match="key 'warp'"):
        load_model(None, ["warp=9"])
    (tmp_path / "m.toml").write_text("[workload]\nboot_median_s = 'soon'\n")
    with pytest.raises(SimulationInputError, match=r"m.toml: key 'boot_median_s'"):
        load_model(tmp_path / "m.toml")
    with pytest.raises(SimulationInputError, match="key 'hard_rate'"):
        parse_params("synthetic:hard_rate=1")


def test_the_synthetic_trace_is_seeded_and_the_bundled_one_loads():
    params = SynthParams(slots=50, hours=24, hard_per_node_hour=0.01, spot_per_node_hour=0.02)
    assert generate(params).events == generate(params).events
    assert generate(params).events != generate(params.model_copy(update={"seed": 2})).events
    bundled = load_trace(ROOT / "examples" / "traces" / "spot-synthetic.json")
    assert bundled.meta.zones == 2 and len(bundled.events) > 10
    assert load_job_file(ROOT / "examples" / "elastic" / "job.toml", Overrides(nodes=16))
