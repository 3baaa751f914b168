"""Message sources: JSONL files now; the Kafka poll loop with tracking and dead letters comes with issue 3."""
