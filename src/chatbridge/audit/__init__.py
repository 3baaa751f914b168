"""The audit: queries answered from the log alone, the hash chain and its checkpoints, crypto-shredding."""
