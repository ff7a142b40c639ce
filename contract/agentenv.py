"""Variables of the agent's own environment that whoever starts an agent (a provider) sets:
here so that coordd's providers need not import the agent to name them."""

from __future__ import annotations

WARM_START_ENV = "COORD_AGENT_WARM_START"  # "0": keep no warm worker interpreter (agent/warm.py)
