"""Shared helpers: registry, options, logging, distributed, checkpoints."""
