"""The chat backend port, its Matrix (Synapse) adapter, and an in-memory fake for tests."""
