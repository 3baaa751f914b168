"""Input contract, aggregates and the lifecycle policy: no I/O here."""
