"""What a worker's exit code tells coordd: one table for the elastic trainer, which exits
with these, and coordd's reconciler, which reads them. Any script may use them too."""

from __future__ import annotations

# The trainer's typed errors (trainer/elastic/errors.py): a bug or bad input, not a machine.
ELASTIC_ERROR_EXIT = 1  # any other ElasticError
ENVIRONMENT_EXIT = 2  # the worker environment is missing or inconsistent
FENCED_EXIT = 3  # this worker's generation is fenced off, or the FENCE file is unreadable
CHECKPOINT_EXIT = 4  # a checkpoint could not be written or read
# EX_UNAVAILABLE from sysexits.h: the service this worker depends on (its agent) is gone.
AGENT_LOST_EXIT = 69
# EX_TEMPFAIL from sysexits.h: a collective failed because a peer vanished; coordd waits for
# its node-loss detection before it charges a restart to the job.
PEER_LOST_EXIT = 75
