"""The worker's environment, read once into a typed, immutable value (contract/workerenv.py
parses it): a variable coord set wrong is an EnvironmentConfigError, like the library's other
refusals to start."""

from __future__ import annotations

from collections.abc import Mapping

from contract.workerenv import ReplicaEnv, WorkerEnv, WorkerEnvError

from .errors import EnvironmentConfigError


def worker_env(environ: Mapping[str, str] | None = None) -> WorkerEnv:
    try:
        return WorkerEnv.from_environ(environ)
    except WorkerEnvError as exc:
        raise EnvironmentConfigError(str(exc)) from exc


def replica_env(environ: Mapping[str, str] | None = None) -> ReplicaEnv:
    try:
        return ReplicaEnv.from_environ(environ)
    except WorkerEnvError as exc:
        raise EnvironmentConfigError(str(exc)) from exc
