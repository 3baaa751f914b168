"""The chat backend port and its Matrix (Synapse) adapter come with issue 4."""
