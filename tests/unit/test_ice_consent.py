"""Consent freshness (RFC 7675 §5.1) on its own: :class:`anchor_ice.consent.ConsentFreshness`,
with literal clock values and a fixed jitter."""

from __future__ import annotations

from anchor_ice.candidate import CandidateType, make_candidate
from anchor_ice.checklist import CandidatePair
from anchor_ice.consent import ConsentFreshness


def _pair(port: int) -> CandidatePair:
    local = make_candidate(CandidateType.HOST, ("127.0.0.1", port))
    remote = make_candidate(CandidateType.HOST, ("127.0.0.1", port + 1))
    return CandidatePair(local, remote, ("127.0.0.1", port))


def _middle(n: int) -> bytes:
    return b"\x7f\xff"[:n]  # 0x7FFF / 0xFFFF: the interval times ~1.0


def test_checks_are_due_every_randomized_interval_and_successes_renew() -> None:
    consent = ConsentFreshness(5.0, 30.0, _middle)
    one, two = _pair(1000), _pair(2000)
    assert consent.next_timer() is None and consent.poll(0.0) == ([], None)
    consent.start(1, one, 10.0, 10.0)
    consent.start(2, two, 10.0, 11.0)
    delay = 5.0 * (0.8 + 0.4 * 0x7FFF / 0xFFFF)  # RFC 7675 §5.1: 0.8-1.2 times the period
    assert consent.next_timer() == 10.0 + delay
    assert consent.poll(10.0 + delay - 0.001) == ([], None)
    assert consent.poll(11.0 + delay) == ([1, 2], None)
    assert consent.poll(11.0 + delay, send_checks=False) == ([], None)
    assert consent.pair(1) is one
    consent.sent(1, 11.0 + delay)
    consent.sent(2, 11.0 + delay)
    assert consent.next_timer() == 11.0 + 2 * delay
    consent.renew(one, 25.0)  # a success on pair one
    assert consent.poll(40.0, send_checks=False) == ([], 2)  # two: 30 s without success
    assert consent.is_lost(2) and not consent.is_lost(1) and consent.lost() == {2}
    assert consent.poll(54.9, send_checks=False) == ([], None)
    consent.renew(two, 50.0)  # too late: lost stays lost
    assert consent.is_lost(2)
    assert consent.poll(55.0, send_checks=False) == ([], 1)
    assert consent.next_timer() is None


def test_keep_and_clear_forget_components() -> None:
    consent = ConsentFreshness(5.0, 30.0, _middle)
    for component in (1, 2, 3):
        consent.start(component, _pair(1000 * component), 0.0, 0.0)
    consent.keep([2])
    assert consent.poll(100.0) == ([], 2)
    assert not consent.is_lost(1) and not consent.is_lost(3)
    consent.clear()
    assert consent.next_timer() is None and consent.lost() == set()
