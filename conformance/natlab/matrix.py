"""The NAT lab matrix: which pair an ephemeral link selects behind every pair of NAT kinds.

``cd conformance && python -m natlab.matrix [--policy gateway|standard|relay] [--json]``
(root: the lab needs network namespaces). Builds the lab once, starts ``anchor serve``
(STUN, TURN and the rendezvous) in ``pub``, and for each of the 4 x 4 combinations of NAT
kinds on natA and natB runs one ``anchor pipe`` pair (:func:`natlab.links.pipe_pair`:
hostA sends 20 numbered messages to hostB under ``--policy``), then prints one markdown
table row per combination: the selected pair as hostA saw it (local <-> remote candidate
types), how hostA reached its TURN server when its own candidate is relayed (udp, tcp or tls;
``-`` otherwise), how long forming took (hostA's "link formed ... in N ms"), the first
message's latency (hostA's first send to hostB's first message, both stamped by ``anchor pipe
-v`` on the clock the namespaces share; issue 18 wants it within 300 ms everywhere), the pair
hostA's link moved to, if it moved, and whether every byte arrived. The lab is always torn down.

Not a test (16 links take over a minute, beyond the lab tests' time budget): the tests
assert the cases that matter in ``conformance/test_natlab_link.py``; this prints the whole
picture for the documentation (docs/pictures.md, "The NAT lab matrix").
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from .lab import NatLab
from .links import pipe_pair, serve_args
from .topology import NatKind

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print it (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m natlab.matrix", description=__doc__)
    parser.add_argument("--policy", default="gateway", choices=("gateway", "standard", "relay"))
    parser.add_argument("--json", action="store_true", help="one JSON object per combination")
    args = parser.parse_args(argv)
    data = b"".join(b"message %05d\n" % i for i in range(20))
    rows: list[dict[str, object]] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="natlab-matrix-") as workdir:
        lab = NatLab(Path(workdir))
        lab.build()
        try:
            lab.start_anchor_serve(serve_args())
            if not args.json:
                print("| natA | natB | pair (hostA's view) | relay over | formed | first message "
                      "| moved to | delivered |\n|---|---|---|---|---|---|---|---|",
                      flush=True)  # fmt: skip
            for kind_a in NatKind:
                for kind_b in NatKind:
                    lab.set_nat("natA", kind_a)
                    lab.set_nat("natB", kind_b)
                    run = pipe_pair(lab, data, extra=["--policy", args.policy])
                    formed = run.sender_formed[0] if run.sender_formed else None
                    moved = run.sender_moved[-1] if run.sender_moved else None
                    first = run.first_message_ms
                    rows.append({
                        "natA": str(kind_a), "natB": str(kind_b),
                        "pair": f"{formed.local_type} <-> {formed.remote_type}" if formed else None,
                        "relay_transport": formed.relay_transport if formed else None,
                        "formed_ms": formed.ms if formed else None,
                        "first_message_ms": None if first is None else round(first),
                        "moved_to": f"{moved.local_type} <-> {moved.remote_type}" if moved else None,
                        "delivered": run.received == data and run.sender_rc == 0,
                    })  # fmt: skip
                    print(json.dumps(rows[-1]) if args.json else
                          f"| {kind_a} | {kind_b} | {rows[-1]['pair'] or 'no link'} | "
                          f"{rows[-1]['relay_transport'] or '-'} | "
                          f"{rows[-1]['formed_ms'] if formed else '-'} ms | "
                          f"{'-' if first is None else round(first)} ms | "
                          f"{rows[-1]['moved_to'] or '-'} | "
                          f"{'yes' if rows[-1]['delivered'] else 'NO'} |", flush=True)  # fmt: skip
        finally:
            lab.teardown()
    if not args.json:
        print(f"\n{len(rows)} combinations, policy {args.policy}, {time.monotonic() - began:.0f} s, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}")  # fmt: skip
    return 0 if all(row["delivered"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
