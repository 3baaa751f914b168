"""The level-triggered reconciler: a pure plan per chat, its apply against the chat backend, and the loop."""
