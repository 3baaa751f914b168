"""The level-triggered reconciler (plan and apply against the chat backend) comes with issue 4."""
