"""The checklist (RFC 8445 §6.1.2, §6.1.4): forming, priorities, ordering, pruning, the pair
limit, initial states and the order of checks."""

from __future__ import annotations

from anchor_ice.candidate import Candidate, CandidateType, make_candidate
from anchor_ice.checklist import CandidatePair, Checklist, PairState, can_pair
from tests.unit.test_ice_harness import host, relay, srflx

HOST_PRIO = 2130706431  # RFC 8445 §5.1.2.1: (126 << 24) + (65535 << 8) + 255
SRFLX_PRIO = 1694498815  # (100 << 24) + (65535 << 8) + 255
RELAY_PRIO = 16777215  # (0 << 24) + (65535 << 8) + 255


def test_candidate_priorities_from_the_formula() -> None:
    assert host("10.0.0.1", 1).priority == HOST_PRIO
    assert srflx("203.0.113.1", 2, ("10.0.0.1", 1)).priority == SRFLX_PRIO
    assert relay("192.0.2.1", 3, ("203.0.113.1", 2)).priority == RELAY_PRIO


def test_pair_priority_for_each_role() -> None:
    # RFC 8445 §6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0), G = controlling's priority.
    pair = CandidatePair(host("10.0.0.1", 1), srflx("203.0.113.9", 9, ("10.0.0.9", 9)),
                         ("10.0.0.1", 1))
    assert pair.compute_priority(True) == 7277816997797167103  # G = host, D = srflx
    assert pair.compute_priority(False) == 7277816997797167102  # G = srflx, D = host
    assert pair.priority == (SRFLX_PRIO << 32) + 2 * HOST_PRIO
    relayed = CandidatePair(host("10.0.0.1", 1), relay("192.0.2.1", 3, ("1.2.3.4", 5)),
                            ("10.0.0.1", 1))
    assert relayed.compute_priority(True) == 72057594004373503


def test_forming_rules() -> None:
    v4 = host("10.0.0.1", 1)
    assert can_pair(v4, host("10.0.0.2", 2))
    assert not can_pair(v4, host("10.0.0.2", 2, component=2))  # another component
    assert not can_pair(v4, host("2001:db8::2", 2))  # another family
    tcp = make_candidate(CandidateType.HOST, ("10.0.0.2", 2), transport="tcp")
    assert not can_pair(v4, tcp)  # another transport
    mdns = Candidate("1", 1, "udp", HOST_PRIO, "abcd.local", 2, CandidateType.HOST)
    assert not can_pair(v4, mdns)  # unresolved mDNS name
    link_local = host("fe80::1", 1)
    assert can_pair(link_local, host("fe80::2", 2))
    assert not can_pair(link_local, host("2001:db8::2", 2))  # RFC 8445 §6.1.2.2


def test_reflexive_local_replaced_by_its_base_and_pruned() -> None:
    checklist = Checklist(controlling=True)
    base = ("10.0.0.1", 5000)
    locals_ = [
        (host("10.0.0.1", 5000), base),
        (srflx("203.0.113.1", 40000, base), base),
        (relay("192.0.2.1", 50000, ("203.0.113.1", 40000)), ("192.0.2.1", 50000)),
    ]
    remotes = [host("10.0.0.2", 6000), srflx("198.51.100.2", 7000, ("10.0.0.2", 6000))]
    added = checklist.form(locals_, remotes)
    # 3 locals x 2 remotes = 6 pairs, the srflx local replaced by its host base: 4 left.
    assert len(added) == 4 == len(checklist.pairs)
    assert [(p.local.type.value, p.remote.type.value) for p in checklist.pairs] == [
        ("host", "host"), ("host", "srflx"), ("relay", "host"), ("relay", "srflx"),
    ]
    assert all(p.base == base for p in checklist.pairs[:2])
    assert [p.priority for p in checklist.pairs] == sorted(
        (p.priority for p in checklist.pairs), reverse=True
    )
    # forming again adds nothing (redundant pairs, RFC 8445 §6.1.2.4)
    assert checklist.form(locals_, remotes) == []


def test_srflx_without_a_host_candidate_checks_from_its_base() -> None:
    checklist = Checklist(controlling=True)
    base = ("10.0.0.1", 5000)
    checklist.form([(srflx("203.0.113.1", 40000, base), base)], [host("10.0.0.2", 6000)])
    (pair,) = checklist.pairs
    assert pair.local.type is CandidateType.SRFLX and pair.base == base


def test_limit_keeps_the_highest_priority_pairs() -> None:
    checklist = Checklist(controlling=True)  # RFC 8445 §6.1.2.5: default 100
    locals_ = [(host(f"10.0.0.{i}", 5000), (f"10.0.0.{i}", 5000)) for i in range(1, 11)]
    locals_.append((relay("192.0.2.1", 50000, ("1.2.3.4", 1)), ("192.0.2.1", 50000)))
    remotes = [host(f"10.1.0.{i}", 6000) for i in range(1, 11)]
    checklist.form(locals_, remotes)
    assert len(checklist.pairs) == 100
    assert checklist.discarded == 10
    assert all(p.local.type is CandidateType.HOST for p in checklist.pairs)  # relay pairs went
    small = Checklist(controlling=True, max_pairs=5)
    small.form(locals_, remotes)
    assert len(small.pairs) == 5 and small.discarded == 105


def test_limit_never_drops_a_pair_under_check() -> None:
    checklist = Checklist(controlling=True, max_pairs=1)
    first = checklist.add(host("10.0.0.1", 1), host("10.0.0.2", 2), ("10.0.0.1", 1))
    assert first is not None
    first.state = PairState.IN_PROGRESS
    assert checklist.add(host("10.0.0.1", 1), host("10.0.0.3", 3), ("10.0.0.1", 1)) is None
    assert checklist.pairs == [first]


def test_initial_states_unfreeze_one_pair_per_foundation() -> None:
    # RFC 8445 §6.1.2.6 (Table 1): per foundation, the pair with the lowest component id,
    # then the highest priority, goes Waiting; the rest stay Frozen.
    checklist = Checklist(controlling=True)
    locals_ = [
        (host("10.0.0.1", 5000), ("10.0.0.1", 5000)),
        (host("10.0.0.1", 5001, component=2), ("10.0.0.1", 5001)),
    ]
    remotes = [
        host("10.0.0.2", 6000), host("10.0.0.2", 6001, component=2),
        host("10.0.0.3", 6000),
    ]
    checklist.form(locals_, remotes)
    checklist.initial_states()
    states = {(p.component, p.remote.ip): p.state for p in checklist.pairs}
    # 10.0.0.2 for both components shares a foundation (same type, same base IP)
    assert states == {
        (1, "10.0.0.2"): PairState.WAITING,
        (2, "10.0.0.2"): PairState.FROZEN,
        (1, "10.0.0.3"): PairState.WAITING,
    }


def test_check_order_triggered_first_then_priority_then_unfreeze() -> None:
    checklist = Checklist(controlling=True)
    locals_ = [(host("10.0.0.1", 5000), ("10.0.0.1", 5000)),
               (relay("192.0.2.1", 50000, ("1.2.3.4", 1)), ("192.0.2.1", 50000))]
    checklist.form(locals_, [host("10.0.0.2", 6000)])
    checklist.initial_states()
    best, low = checklist.pairs
    checklist.enqueue_triggered(low)
    assert checklist.next_check() is low  # §6.1.4.2 step 1
    low.state = PairState.IN_PROGRESS
    assert checklist.next_check() is best  # step 3
    best.state = PairState.IN_PROGRESS
    assert checklist.next_check() is None and not checklist.has_work()


def test_frozen_pairs_wait_for_their_foundation() -> None:
    checklist = Checklist(controlling=True)
    locals_ = [(host("10.0.0.1", 5000), ("10.0.0.1", 5000)),
               (host("10.0.0.1", 5001, component=2), ("10.0.0.1", 5001))]
    checklist.form(locals_, [host("10.0.0.2", 6000), host("10.0.0.2", 6001, component=2)])
    checklist.initial_states()
    first, second = checklist.pairs
    assert (first.state, second.state) == (PairState.WAITING, PairState.FROZEN)
    assert checklist.next_check() is first
    first.state = PairState.IN_PROGRESS
    assert not checklist.has_work()  # the frozen pair's foundation is in progress
    first.state = PairState.FAILED  # §7.2.5.2 NOTE: failure does not unfreeze...
    assert checklist.has_work()  # ...but step 2 of §6.1.4.2 does, once nothing is busy
    assert checklist.next_check() is second and second.state is PairState.WAITING
    checklist2 = Checklist(controlling=True)
    checklist2.form(locals_, [host("10.0.0.2", 6000), host("10.0.0.2", 6001, component=2)])
    checklist2.initial_states()
    checklist2.unfreeze_foundation(checklist2.pairs[0].foundation)  # §7.2.5.3.3 on success
    assert {p.state for p in checklist2.pairs} == {PairState.WAITING}


def test_equal_priorities_check_the_lowest_component_first() -> None:
    checklist = Checklist(controlling=True)
    a = checklist.add(host("10.0.0.1", 2, component=2), host("10.0.0.2", 2, component=2),
                      ("10.0.0.1", 2))
    b = checklist.add(host("10.0.0.1", 1), host("10.0.0.2", 1), ("10.0.0.1", 1))
    assert a is not None and b is not None
    a.priority = b.priority = 7
    a.state = b.state = PairState.WAITING
    assert checklist.next_check() is b


def test_role_change_recomputes_priorities() -> None:
    checklist = Checklist(controlling=True)
    checklist.form([(host("10.0.0.1", 1), ("10.0.0.1", 1))],
                   [srflx("203.0.113.9", 9, ("10.0.0.9", 9))])
    (pair,) = checklist.pairs
    assert pair.priority == 7277816997797167103
    checklist.set_role(False)
    assert pair.priority == 7277816997797167102


def test_a_better_local_replaces_the_local_of_a_redundant_pair() -> None:
    checklist = Checklist(controlling=True)
    base = ("10.0.0.1", 5000)
    checklist.form([(srflx("203.0.113.1", 40000, base), base)], [host("10.0.0.2", 6000)])
    (pair,) = checklist.pairs
    assert pair.local.type is CandidateType.SRFLX
    # the host candidate at that base arrives later: same base, same remote, higher priority
    assert checklist.form([(host(*base), base)], [host("10.0.0.2", 6000)]) == []
    assert checklist.pairs == [pair]
    assert (pair.local.type.value, pair.priority) == ("host", 9151314442783293438)


def test_state_of_pairs_added_while_checks_run() -> None:
    checklist = Checklist(controlling=True)
    locals_ = [(host("10.0.0.1", 5000), ("10.0.0.1", 5000)),
               (host("10.0.0.1", 5001, component=2), ("10.0.0.1", 5001))]
    checklist.form(locals_[:1], [host("10.0.0.2", 6000)])
    checklist.initial_states()
    (first,) = checklist.pairs
    first.state = PairState.IN_PROGRESS
    (late,) = checklist.form(locals_[1:], [host("10.0.0.2", 6001, component=2)])
    assert late.foundation == first.foundation
    assert checklist.state_for_new_pair(late) is PairState.FROZEN  # its foundation is busy
    first.state = PairState.SUCCEEDED
    assert checklist.state_for_new_pair(late) is PairState.WAITING  # already succeeded
    (other,) = checklist.form(locals_[:1], [host("10.0.0.3", 6000)])
    assert checklist.state_for_new_pair(other) is PairState.WAITING  # a new foundation
