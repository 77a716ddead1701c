"""The sans-I/O cores: a STUN client and server joined in memory, with a clock that is a number.

No socket, no event loop, no sleeping: this is how Anchor's cores are driven (and tested),
after aioquic and h11. The client core (:class:`anchor_stun.StunClient`) says what to send
(``datagrams_to_send(now)``) and when it next wants to be woken (``next_timer()``); the
server core (:class:`anchor_stun.StunServer`) turns a request into a response
(``handle(data, addr, local, now)``). Between them this script plays the network: it loses
the first request, and pretends a NAT maps the client to 203.0.113.5:40000.

RFC 8489 §6.2.1: the lost request is retransmitted after RTO = 0.5 s, the answer's
XOR-MAPPED-ADDRESS is the NAT's address, and since a copy was retransmitted the RTT
sample is ambiguous (Karn's algorithm): the event says how many copies went out.

Run: ``python examples/sans_io_stun.py``. Exit 0 and ``mapped 203.0.113.5:40000 ...``.
"""

from __future__ import annotations

import os
import sys

from anchor_stun import (
    Message,
    MessageClass,
    Method,
    StunClient,
    StunServer,
    TransactionSucceeded,
    XorMappedAddress,
    format_address,
)

SERVER = ("192.0.2.1", 3478)  # documentation addresses (RFC 5737): nothing is sent anywhere
CLIENT_AS_SEEN = ("203.0.113.5", 40000)  # what the "NAT" makes of the client
ONE_WAY = 0.020  # seconds of network delay, each way


def main() -> None:
    client = StunClient()
    server = StunServer(primary=SERVER)
    now = 0.0

    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    client.send_request(request.encode(fingerprint=True), SERVER, now)
    lost = client.datagrams_to_send(now)  # the first copy: the network drops it
    print(f"t={now:.3f} sent {len(lost[0].data)} bytes to {format_address(lost[0].addr)}: lost")

    now = client.next_timer() or 0.0  # RTO: 0.5 s after the first send
    client.handle_timer(now)
    for transmit in client.datagrams_to_send(now):
        print(f"t={now:.3f} retransmitted to {format_address(transmit.addr)}")
        answer = server.handle(transmit.data, CLIENT_AS_SEEN, SERVER, now + ONE_WAY)
        assert answer is not None and answer.addr == CLIENT_AS_SEEN
        now += 2 * ONE_WAY
        client.receive_datagram(answer.data, SERVER, now)

    event = client.next_event()
    if not isinstance(event, TransactionSucceeded):
        sys.exit(f"error: expected a success response, got {event!r}")
    mapped = event.response.get(XorMappedAddress)
    assert mapped is not None
    if mapped.address != CLIENT_AS_SEEN or event.retransmissions != 1:
        sys.exit(f"error: unexpected result {event!r}")
    print(
        f"mapped {format_address(mapped.address)} at t={now:.3f} "
        f"(rtt {event.rtt:.3f} s from the first send, {event.retransmissions} retransmission)"
    )


if __name__ == "__main__":
    main()
