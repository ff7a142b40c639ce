"""What coordd, its agents, its clients and the elastic trainer share, in one place: the
worker environment, control lines, the fence file, exit codes, events and their payloads,
transport and call metadata, the bundle format, logging set-up, the job spec and states, and
the error hierarchy. It imports none of `coordinator`, `agent` or `trainer` (the wire contract,
`coord.v1`, sits beside it); tests/unit/test_import_rules.py keeps it so."""
