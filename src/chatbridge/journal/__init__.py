"""The write path's persistence: the intake ledger, the hash chain's links and signed checkpoints, the sealing of
persons' names and their keys — everything written in the event store's own transaction."""
