"""coord's trainer side: the elastic training library (`trainer.elastic`)."""
