"""Subcommands of ``spafoundation``; each module defines ``register(subparsers)`` (see ``cli.py``)."""
