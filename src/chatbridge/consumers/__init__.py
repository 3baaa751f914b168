"""Message sources: JSONL files and the Kafka poll loop (positions stored with the events), and dead letters."""
