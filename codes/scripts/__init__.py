"""Command-line tools: ``python -m codes.scripts.<name>``."""
