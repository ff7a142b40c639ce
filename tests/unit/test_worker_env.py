"""What a job's worker inherits from its agent."""

from agent.supervisor import worker_env


def test_workers_do_not_inherit_the_agent_token(monkeypatch):
    monkeypatch.setenv("COORD_TOKEN", "agent-secret")
    monkeypatch.setenv("SOME_SETTING", "kept")
    env = worker_env({"JOB_VAR": "1"})
    assert "COORD_TOKEN" not in env
    assert env["SOME_SETTING"] == "kept" and env["JOB_VAR"] == "1"
