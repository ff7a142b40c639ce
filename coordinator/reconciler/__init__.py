"""The per-job reconciler: `decide` (pure) says what to do, `runner` does it."""
