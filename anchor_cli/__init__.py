"""anchor_cli: the ``anchor`` command (``python -m anchor_cli``) and its subcommands."""

from __future__ import annotations

from anchor_cli.main import build_parser, main

__all__ = ["build_parser", "main"]
