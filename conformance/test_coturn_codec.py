"""anchor_stun's codec against a real STUN/TURN server: coturn 4.6, over real sockets.

Requests are built with anchor_stun and sent with plain ``socket`` / ``ssl``; coturn's
answers are decoded with anchor_stun. What this proves:

- Binding over UDP, TCP and TLS (and IPv6 UDP): coturn understands our requests (with and
  without FINGERPRINT), and the XOR-MAPPED-ADDRESS we decode is the client socket's own
  address; coturn's FINGERPRINT verifies.
- A comprehension-required attribute coturn does not know gets a 420 whose
  UNKNOWN-ATTRIBUTES we decode; an optional one is ignored.
- The long-term credential dance (RFC 8489 §9.2, RFC 8656 §7.2): Allocate -> 401 with
  REALM and NONCE -> Allocate with USERNAME, REALM, NONCE, MESSAGE-INTEGRITY (MD5 key) ->
  success with XOR-RELAYED-ADDRESS in coturn's relay range, whose MESSAGE-INTEGRITY
  verifies with the same key; a wrong password gets 401; then Refresh with LIFETIME 0
  releases the allocation (coturn then closes the relayed port).
- RFC 5780 (coturn with two addresses): OTHER-ADDRESS and RESPONSE-ORIGIN decode to the
  addresses coturn really uses, and CHANGE-REQUEST makes the answer come from them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from hashlib import md5
from pathlib import Path

import pytest
from peers import (
    LOOPBACK,
    LOOPBACK_ALT,
    Coturn,
    binding_request,
    start_coturn,
    stun_request_stream,
    stun_request_udp,
    tls_client_context,
    transaction_id,
)

from anchor_stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCodeAttribute,
    Lifetime,
    MappedAddress,
    Nonce,
    OtherAddress,
    RawAttribute,
    Realm,
    RequestedTransport,
    ResponseOrigin,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorRelayedAddress,
)
from anchor_stun.message import Message, MessageClass, Method

pytestmark = pytest.mark.peer("coturn")


# --------------------------------------------------------------------------- transports


class Client:
    """One client socket to coturn: ``request(msg_bytes) -> Message``."""

    def __init__(self, transport: str, server: Coturn) -> None:
        self.transport = transport
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((LOOPBACK, 0))
            self.server = server.udp
        elif transport == "tcp":
            self.sock = socket.create_connection(server.tcp, timeout=5)
        else:
            assert server.cert is not None
            raw = socket.create_connection(server.tls, timeout=5)
            self.sock = tls_client_context(server.cert).wrap_socket(raw, server_hostname=LOOPBACK)

    @property
    def address(self) -> tuple[str, int]:
        """The client's own transport address, as the server should see it."""
        host, port = self.sock.getsockname()[:2]
        return (host, port)

    def request(self, data: bytes) -> Message:
        if self.transport == "udp":
            response, source = stun_request_udp(self.sock, data, self.server)
            assert source == self.server
            return response
        return stun_request_stream(self.sock, data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["udp", "tcp", "tls"])
def client(request: pytest.FixtureRequest, coturn: Coturn) -> Iterator[Client]:
    c = Client(request.param, coturn)
    try:
        yield c
    finally:
        c.close()


# --------------------------------------------------------------------------- Binding


@pytest.mark.parametrize("fingerprint", [False, True])
def test_binding_reflects_the_client_address(client: Client, fingerprint: bool) -> None:
    request = binding_request()
    response = client.request(request.encode(fingerprint=fingerprint))
    assert response.method == Method.BINDING
    assert response.msg_class == MessageClass.SUCCESS
    assert response.transaction_id == request.transaction_id
    mapped = response.get(XorMappedAddress)
    assert mapped is not None, response
    assert mapped.address == client.address
    legacy = response.get(MappedAddress)  # coturn also sends the RFC 3489 form
    if legacy is not None:
        assert legacy.address == client.address
    software = response.get(Software)
    assert software is not None and "Coturn" in software.value
    assert response.unknown_required() == []
    if response.fingerprint is not None:
        assert response.verify_fingerprint()
    if fingerprint:
        # coturn answers a request that carries FINGERPRINT with one (RFC 8489 §7.3).
        assert response.fingerprint is not None


def test_binding_over_ipv6(tmp_path: Path) -> None:
    """XOR-MAPPED-ADDRESS of an IPv6 client: XORed with the cookie and the transaction id."""
    server = start_coturn(tmp_path / "coturn6", tls=False, host="::1")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
            for _ in range(3):  # several transaction ids
                request = binding_request()
                response, source = stun_request_udp(
                    sock, request.encode(fingerprint=True), ("::1", server.port)
                )
                assert source == ("::1", server.port)
                assert response.msg_class == MessageClass.SUCCESS
                mapped = response.get(XorMappedAddress)
                assert mapped is not None
                assert mapped.address == sock.getsockname()[:2]
                assert response.verify_fingerprint()
    finally:
        server.stop()


def test_unknown_required_attribute_gets_420(client: Client) -> None:
    request = binding_request(RawAttribute(0x7F31, b"test"))
    response = client.request(request.encode())
    assert response.msg_class == MessageClass.ERROR
    error = response.error
    assert error is not None and error.code == 420
    # coturn pads its reason phrase with NULs inside the attribute: keep what it sent.
    assert error.reason.rstrip("\x00") == "Unknown Attribute"
    unknown = response.get(UnknownAttributes)
    assert unknown is not None and unknown.types == (0x7F31,)


def test_unknown_optional_attribute_is_ignored(client: Client) -> None:
    request = binding_request(RawAttribute(0xC057, b"\x00\x01\x00\x0a"), Software("anchor"))
    response = client.request(request.encode(fingerprint=True))
    assert response.msg_class == MessageClass.SUCCESS
    mapped = response.get(XorMappedAddress)
    assert mapped is not None and mapped.address == client.address


# --------------------------------------------------------------------------- long-term credentials


def allocate_request(*attrs: Attribute) -> Message:
    return Message(
        Method.ALLOCATE, MessageClass.REQUEST, transaction_id(), [RequestedTransport(17), *attrs]
    )


def challenge(client: Client) -> tuple[str, str]:
    """Send an unauthenticated Allocate; return (realm, nonce) of coturn's 401."""
    response = client.request(allocate_request().encode(fingerprint=True))
    assert response.method == Method.ALLOCATE
    assert response.msg_class == MessageClass.ERROR
    assert response.error is not None and response.error.code == 401
    assert response.integrity is None  # a 401 cannot be authenticated
    realm, nonce = response.get(Realm), response.get(Nonce)
    assert realm is not None and nonce is not None
    assert nonce.value
    return realm.value, nonce.value


def test_long_term_credentials_allocate_and_release(client: Client, coturn: Coturn) -> None:
    realm, nonce = challenge(client)
    assert realm == coturn.realm
    key = coturn.long_term_key()
    credentials = [Username(coturn.username), Realm(realm), Nonce(nonce)]

    request = allocate_request(Lifetime(300), *credentials)
    response = client.request(request.encode(key=key, fingerprint=True))
    assert response.transaction_id == request.transaction_id
    assert response.msg_class == MessageClass.SUCCESS, (response.error, coturn.log()[-2000:])
    assert response.integrity is not None
    assert response.verify_integrity(key)
    assert not response.verify_integrity(b"not the key")
    assert response.verify_fingerprint()
    relayed = response.get(XorRelayedAddress)
    assert relayed is not None
    assert relayed.ip == LOOPBACK
    assert coturn.min_port <= relayed.port <= coturn.max_port
    mapped = response.get(XorMappedAddress)
    assert mapped is not None and mapped.address == client.address
    lifetime = response.get(Lifetime)
    assert lifetime is not None and 0 < lifetime.value <= 3600
    assert not udp_port_free(relayed.address)  # coturn holds the relayed port

    refresh = Message(
        Method.REFRESH, MessageClass.REQUEST, transaction_id(), [Lifetime(0), *credentials]
    )
    released = client.request(refresh.encode(key=key, fingerprint=True))
    assert released.msg_class == MessageClass.SUCCESS, released.error
    assert released.verify_integrity(key)
    lifetime = released.get(Lifetime)
    assert lifetime is not None and lifetime.value == 0

    # coturn deletes the allocation on its next timer tick (about a second later): its
    # relayed port is then closed, so this process can bind it.
    assert wait_for(lambda: udp_port_free(relayed.address)), coturn.log()[-2000:]


def udp_port_free(address: tuple[str, int]) -> bool:
    """True when nobody (coturn's relay) holds this UDP address any more."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def wait_for(condition: Callable[[], bool], deadline: float = 20.0) -> bool:
    """Poll ``condition`` until it holds; False after ``deadline`` seconds (a hang bound)."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_wrong_password_is_refused(client: Client, coturn: Coturn) -> None:
    realm, nonce = challenge(client)
    wrong = md5(f"{coturn.username}:{realm}:not-{coturn.password}".encode()).digest()
    request = allocate_request(Username(coturn.username), Realm(realm), Nonce(nonce))
    response = client.request(request.encode(key=wrong, fingerprint=True))
    assert response.msg_class == MessageClass.ERROR
    error = response.get(ErrorCodeAttribute)
    assert error is not None and error.code == 401


# --------------------------------------------------------------------------- RFC 5780


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    try:
        yield sock
    finally:
        sock.close()


# coturn 4.6.1 on loopback with -L 127.0.0.1 -L 127.0.0.2 often answers a request sent to
# 127.0.0.1:P from 127.0.0.2 (its RESPONSE-ORIGIN then says 127.0.0.2 too; turnutils_stunclient
# sees the same). So these tests check what holds either way: RESPONSE-ORIGIN is where the
# answer really came from, OTHER-ADDRESS is one of coturn's addresses, and CHANGE-REQUEST's
# "change port" / "change IP" bits (0x2 / 0x4) are read as we meant them.


def coturn_5780_addresses(server: Coturn) -> set[tuple[str, int]]:
    assert server.alt_port == server.port + 1
    return {
        (ip, port) for ip in (LOOPBACK, LOOPBACK_ALT) for port in (server.port, server.alt_port)
    }


def test_rfc5780_other_address_and_response_origin(
    coturn_5780: Coturn, udp_socket: socket.socket
) -> None:
    response, source = stun_request_udp(
        udp_socket, binding_request().encode(fingerprint=True), coturn_5780.udp
    )
    assert source in coturn_5780_addresses(coturn_5780)
    other = response.get(OtherAddress)
    assert other is not None and other.address in coturn_5780_addresses(coturn_5780)
    assert other.ip == LOOPBACK_ALT and other.port == coturn_5780.alt_port
    origin = response.get(ResponseOrigin)
    assert origin is not None and origin.address == source
    mapped = response.get(XorMappedAddress)
    assert mapped is not None and mapped.address == udp_socket.getsockname()
    if response.fingerprint is not None:
        assert response.verify_fingerprint()


@pytest.mark.parametrize(
    ("change_ip", "change_port"),
    [(False, False), (False, True), (True, False), (True, True)],
)
def test_rfc5780_change_request(
    coturn_5780: Coturn, udp_socket: socket.socket, change_ip: bool, change_port: bool
) -> None:
    request = binding_request(ChangeRequest(change_ip, change_port))
    response, source = stun_request_udp(
        udp_socket, request.encode(fingerprint=True), coturn_5780.udp
    )
    assert response.msg_class == MessageClass.SUCCESS
    assert source in coturn_5780_addresses(coturn_5780)
    assert source[1] == (coturn_5780.alt_port if change_port else coturn_5780.port)
    if change_ip:
        assert source[0] == LOOPBACK_ALT
    origin = response.get(ResponseOrigin)
    assert origin is not None and origin.address == source
    mapped = response.get(XorMappedAddress)
    assert mapped is not None and mapped.address == udp_socket.getsockname()
    if response.fingerprint is not None:
        assert response.verify_fingerprint()
