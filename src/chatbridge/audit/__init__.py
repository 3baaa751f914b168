"""Audit queries, the hash chain and crypto-shredding come with issue 5."""
