"""What both elastic contexts hold for the script: its model, optimizer and scheduler (bound by
`restore`) and the step log in the checkpoint directory, opened on first use."""

from __future__ import annotations

from typing import Any

import torch

from .steplog import StepLog


class BoundObjects:
    """Mixed into a context that has `env.checkpoint_dir`, `_bound` and `_steplog`."""

    env: Any
    _bound: tuple[torch.nn.Module, Any, Any] | None
    _steplog: StepLog | None

    def _require_bound(self) -> tuple[torch.nn.Module, Any, Any]:
        if self._bound is None:
            raise RuntimeError("call ctx.restore(model, optimizer, scheduler) first")
        return self._bound

    def _step_log(self) -> StepLog:
        if self._steplog is None:
            self._steplog = StepLog(self.env.checkpoint_dir)
        return self._steplog
