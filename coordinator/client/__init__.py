"""The client side of coord: the SDK and the `coord` CLI, what a user's laptop runs. It
imports only the wire contract (`coord.v1`) and the shared one (`contract`), none of coordd's
modules, so `pip install coord` is enough to submit and follow jobs
(tests/unit/test_import_rules.py keeps it so)."""
