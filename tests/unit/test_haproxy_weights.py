"""The weight math of the HAProxy router (percents per revision <-> per-server HAProxy weights), its runtime
API parsing, and the port reservations the routed platforms share."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from adapters.haproxy import (
    MAX_WEIGHT,
    Counters,
    effective_percents,
    parse_servers_state,
    parse_show_stat,
    server_weights,
    shares_to_percent,
    slot_counters,
)
from adapters.localhost import reserve_port
from engine.platform import PlatformError


def share(percents: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """What HAProxy's weighted round robin gives each revision with the computed weights."""
    weights = server_weights(percents, counts)
    return effective_percents({rev: [weights[rev]] * counts[rev] for rev in counts})


@pytest.mark.parametrize(
    ("percents", "counts"),
    [
        ({"a": 80, "b": 20}, {"a": 1, "b": 1}),
        ({"a": 90, "b": 10}, {"a": 2, "b": 1}),
        ({"a": 99, "b": 1}, {"a": 3, "b": 1}),
        ({"a": 50, "b": 50}, {"a": 5, "b": 2}),
        ({"a": 1, "b": 99}, {"a": 1, "b": 64}),
        ({"a": 33, "b": 33, "c": 34}, {"a": 1, "b": 2, "c": 3}),
    ],
)
def test_shares_equal_the_percents(percents: dict[str, int], counts: dict[str, int]) -> None:
    assert share(percents, counts) == percents


def test_every_split_of_two_revisions_reads_back_within_one_percent() -> None:
    for canary, stable_servers, canary_servers in itertools.product(range(101), (1, 2, 5), (1, 3)):
        percents = {"stable": 100 - canary, "canary": canary}
        got = share(percents, {"stable": stable_servers, "canary": canary_servers})
        assert abs(got["canary"] - canary) <= 1, (percents, got)


def test_weights_stay_within_haproxy_limits() -> None:
    weights = server_weights({"a": 100, "b": 0}, {"a": 1, "b": 3})
    assert weights == {"a": MAX_WEIGHT, "b": 0}
    weights = server_weights({"a": 99, "b": 1}, {"a": 1, "b": 64})
    assert weights["a"] == MAX_WEIGHT
    assert weights["b"] == 1  # a revision with traffic never gets 0
    assert all(0 <= w <= MAX_WEIGHT for w in weights.values())


def test_no_traffic_means_weight_zero() -> None:
    assert server_weights({}, {"a": 2}) == {"a": 0}
    assert server_weights({"a": 0, "b": 100}, {"a": 2, "b": 1}) == {"a": 0, "b": MAX_WEIGHT}


def test_a_revision_without_servers_gets_nothing() -> None:
    assert server_weights({"a": 50, "b": 50}, {"a": 1}) == {"a": MAX_WEIGHT}


def test_bad_percent_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        server_weights({"a": 120}, {"a": 1})


def test_shares_round_to_exactly_100() -> None:
    assert shares_to_percent({"a": 1.0, "b": 1.0, "c": 1.0}) == {"a": 34, "b": 33, "c": 33}
    assert sum(shares_to_percent({"a": 205.0, "b": 51.0}).values()) == 100
    assert shares_to_percent({"a": 0.0, "b": 0.0}) == {"a": 0, "b": 0}
    assert shares_to_percent({}) == {}


def test_slot_counters_count_attempts_without_answer_as_errors() -> None:
    row = {"stot": "12", "hrsp_2xx": "7", "hrsp_5xx": "2", "cli_abrt": "1", "scur": "1", "eresp": "4"}
    # 12 attempts: 9 answered, 1 aborted by the client, 1 in flight, so 1 got no answer at all.
    assert slot_counters(row) == Counters(requests=10, errors=3)
    assert slot_counters({"stot": "", "hrsp_2xx": ""}) == Counters()


def test_counters_never_go_negative() -> None:
    assert Counters(requests=3, errors=1).minus(Counters(requests=5, errors=0)) == Counters(errors=1)


def test_parse_runtime_api_answers() -> None:
    stat = "# pxname,svname,stot,hrsp_2xx,\nbe,s1,4,4,\nbe,BACKEND,4,4,\n\n"
    assert [r["svname"] for r in parse_show_stat(stat)] == ["s1", "BACKEND"]
    assert [r["svname"] for r in parse_show_stat(stat, {"s1"})] == ["s1"]
    # One answer per slot asked for, each with its own header: the rows of the slots, once each.
    several = "# pxname,svname,stot,hrsp_2xx,\nbe,s1,4,4,\n\n# pxname,svname,stot,hrsp_2xx,\nbe,s7,2,1,\n\n"
    rows = parse_show_stat(several, {"s1", "s7"})
    assert [(r["svname"], r["stot"]) for r in rows] == [("s1", "4"), ("s7", "2")]
    state = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n"
        "3 be 1 s1 127.0.0.1 2 0 256\n3 be 2 s2 127.0.0.1 0 5 0\n"
    )
    servers = parse_servers_state(state)
    assert servers["s1"]["srv_uweight"] == "256"
    assert servers["s2"]["srv_admin_state"] == "5"


def test_servers_state_is_read_for_the_slots_in_use_only() -> None:
    """A backend lists every slot (128 by default): only the wanted ones are parsed, by exact name."""
    header = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n"
    rows = "".join(f"3 be {n} s{n} 127.0.0.{n} 2 0 {n * 10}\n" for n in range(1, 129))
    wanted = parse_servers_state(header + rows, {"s1", "s12", "s128"})
    assert sorted(wanted) == ["s1", "s12", "s128"]  # not s10..s19 for s1, nor s120..s127 for s12
    assert wanted["s12"]["srv_addr"] == "127.0.0.12" and wanted["s128"]["srv_uweight"] == "1280"
    assert parse_servers_state(header + rows, set()) == {}
    assert len(parse_servers_state(header + rows)) == 128
    # A last line without its trailing optional columns, and no line for a wanted name.
    short = "# be_id be_name srv_id srv_name\n3 be 1 s1\n"
    assert parse_servers_state(short, {"s1", "s2"}) == {
        "s1": {"be_id": "3", "be_name": "be", "srv_id": "1", "srv_name": "s1"}
    }
    assert parse_servers_state("1\n", {"s1"}) == {}  # no header: nothing is guessed


def test_a_reserved_port_is_not_handed_out_again(tmp_path: Any) -> None:
    """Runners are separate processes: what one was given is in the file, not in memory."""
    registry = tmp_path / "ports.reserved"
    first = reserve_port(registry, (5000, 5001), set(), lambda port: True, "local")
    second = reserve_port(registry, (5000, 5001), set(), lambda port: True, "local")
    assert {first, second} == {5000, 5001}
    with pytest.raises(PlatformError, match="no free port left in the range 5000-5001"):
        reserve_port(registry, (5000, 5001), set(), lambda port: True, "local")
    # A replica restarted on its own port keeps it; a port that is not free is never given.
    assert reserve_port(registry, (5000, 5001), set(), lambda port: True, "local", preferred=first) == first
    with pytest.raises(PlatformError):
        reserve_port(tmp_path / "other", (5000, 5001), {5000}, lambda port: port != 5001, "local", 5001)
