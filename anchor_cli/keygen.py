"""``anchor keygen --out FILE``: a new endpoint identity (:mod:`anchor_link.identity`).

Writes the private key to FILE (mode 0600; an existing file is never overwritten: exit 1)
and prints the public identity, ``anchor1:...``, as the last line on stdout: the text a peer
pins with ``anchor pipe --trust NAME=PUBLIC``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from anchor_link.identity import Identity, IdentityError

__all__ = ["add_parser", "main"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``keygen`` to the ``anchor`` subparsers."""
    keygen: argparse.ArgumentParser = sub.add_parser(
        "keygen",
        help="make an endpoint identity (X25519 key file) and print its public identity",
        description="Writes a new identity's private key to FILE (mode 0600, never "
        "overwriting) and prints its public identity (anchor1:...) as the last line.",
    )
    keygen.add_argument("--out", required=True, metavar="FILE", help="the identity file to write")
    return keygen


def main(args: argparse.Namespace) -> int:
    """Entry point of ``anchor keygen``."""
    identity = Identity.generate()
    try:
        identity.save(args.out)
    except IdentityError as exc:
        print(f"anchor keygen: {exc}", file=sys.stderr)
        return 1
    print(f"identity written to {args.out}", file=sys.stderr)
    print(identity.public_text, flush=True)
    return 0
