"""Capture and restore random number generator states (python, numpy if loaded, torch, CUDA).

States are stored as plain lists and tensors so a checkpoint loads with
`torch.load(weights_only=True)`. numpy is only touched when the script already imported it:
the library does not depend on numpy.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch


def capture() -> dict[str, Any]:
    """This process's RNG states, in a form torch.save/load(weights_only) accepts."""
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        states["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return states


def restore(states: dict[str, Any]) -> None:
    """Put back the states `capture` returned; absent entries are left alone."""
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda_states = states["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    numpy = sys.modules.get("numpy")
    if "numpy" in states and numpy is not None:
        name, keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos,
                                has_gauss, cached))
