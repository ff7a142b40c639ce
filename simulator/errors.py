"""The simulator's typed errors: bad input names its file and the field or line."""

from contract.errors import InvalidSpec


class SimulationInputError(InvalidSpec):
    """A trace, model or sweep the simulator cannot use; the message says where and why."""


class SimulationError(RuntimeError):
    """The simulation reached a state it cannot go on from (a bug, not bad input)."""
