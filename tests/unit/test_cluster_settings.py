"""Settings for a cluster of several nodes: the journal's backend in enterprise_config.yaml (never a password
in the file), what may be shown of a journal's location, and where actors are placed (``ray.nodes`` faked)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from actors import placement
from actors.domain import _monitor_chunks
from engine.config import ConfigError, EnterpriseConfig, load_config
from engine.journal_store import describe, is_postgres
from engine.models import PlatformConfig


def _journal(settings: dict[str, Any]) -> EnterpriseConfig:
    return EnterpriseConfig.from_mapping({"journal": settings}, "enterprise_config.yaml")


def test_the_default_journal_is_a_sqlite_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_HOME", str(tmp_path))
    config = _journal({})
    assert config.journal_location() == str(tmp_path / "journal.db")
    assert not is_postgres(config.journal_location())


@pytest.mark.parametrize("url", ["env:ORCH_JOURNAL_URL", "file:/run/secrets/journal-url"])
def test_a_postgresql_journal_takes_a_reference(url: str) -> None:
    config = _journal({"backend": "postgresql", "url": url})
    assert config.journal_location() == url and is_postgres(url)
    with pytest.raises(ValueError, match="has no file"):
        config.journal_path()


def test_a_url_without_a_password_may_be_written_in_the_file() -> None:
    url = "postgresql://orch@db.internal:5432/journal?sslmode=verify-full&sslrootcert=/etc/ca.crt"
    assert _journal({"backend": "postgresql", "url": url}).journal_location() == url


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"backend": "postgresql"}, "journal.url: required for backend postgresql"),
        ({"backend": "postgresql", "url": "postgresql://orch:s3cret@db/j"}, "journal.url: holds a password"),
        (
            {"backend": "postgresql", "url": "postgresql://db/j?password=s3cret"},
            "journal.url: holds a password",
        ),
        ({"backend": "postgresql", "url": "mysql://db/j"}, "journal.url: must be env:NAME, file:/path"),
        ({"backend": "postgresql", "url": "env:X", "path": "j.db"}, "journal.path: is for backend sqlite"),
        ({"url": "env:X"}, "journal.url: is for backend postgresql"),
        ({"backend": "oracle"}, "journal.backend: input should be 'sqlite' or 'postgresql'"),
    ],
)
def test_bad_journal_settings_are_refused_naming_the_field(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _journal(settings)
    assert problem in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_the_journal_settings_load_from_yaml(tmp_path: Any) -> None:
    path = tmp_path / "enterprise_config.yaml"
    path.write_text(yaml.safe_dump({"journal": {"backend": "postgresql", "url": "env:ORCH_JOURNAL_URL"}}))
    assert load_config(path).journal_location() == "env:ORCH_JOURNAL_URL"


def test_a_location_is_shown_without_its_password() -> None:
    shown = describe("postgresql://orch:s3cret@db.internal:5433/journal?sslmode=verify-full")
    assert shown == "postgresql://orch@db.internal:5433/journal"
    assert describe("/var/lib/journal.db") == "/var/lib/journal.db"
    assert describe("env:ORCH_JOURNAL_URL") == "env:ORCH_JOURNAL_URL"


# ------------------------------------------------------------------------------------------------ placement
def _id(letter: str) -> str:
    return letter * 56  # node ids are 28 bytes in hex


def _node(letter: str, alive: bool = True, head: bool = False, labels: dict[str, str] | None = None) -> Any:
    resources = {"CPU": 1.0, **({placement.HEAD_RESOURCE: 1.0} if head else {})}
    return {"NodeID": _id(letter), "Alive": alive, "Resources": resources, "Labels": labels or {}}


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    cluster: list[Any] = []
    monkeypatch.setattr(placement.ray, "nodes", lambda: cluster)
    return cluster


LOCAL, KUBERNETES = PlatformConfig(type="local"), PlatformConfig(type="kubernetes")
LABEL = {placement.PLATFORM_NODE_LABEL: "true"}


def test_platforms_without_node_state_and_single_nodes_are_not_pinned(nodes: list[Any]) -> None:
    nodes += [_node("a", head=True), _node("b")]
    assert placement.platform_node(KUBERNETES) is None
    assert placement.platform_strategy(PlatformConfig(type="lambda")) is None
    nodes[1:] = []
    assert placement.platform_node(LOCAL) is None  # one node: nowhere else to go


def test_the_local_platform_is_pinned_to_the_labelled_node_else_the_head(nodes: list[Any]) -> None:
    nodes += [_node("a", head=True), _node("b"), _node("c")]
    assert placement.platform_node(LOCAL) == _id("a")
    nodes[2] = _node("c", labels=LABEL)
    assert placement.platform_node(PlatformConfig(type="docker")) == _id("c")
    strategy = placement.platform_strategy(PlatformConfig(type="vm"))
    assert strategy is not None and strategy.node_id == _id("c") and strategy.soft is False


def test_a_platform_whose_node_left_fails_instead_of_moving(nodes: list[Any]) -> None:
    nodes += [_node("a", head=True), _node("b"), _node("c", alive=False, labels=LABEL)]
    with pytest.raises(placement.PlatformNodeGone, match="platform local: its node"):
        placement.platform_node(LOCAL)


def test_runners_and_monitors_are_spread_round_robin(nodes: list[Any]) -> None:
    nodes += [_node("b"), _node("a", head=True), _node("c"), _node("d", alive=False)]
    chosen = [s.node_id for s in placement.spread_over_nodes(6)]
    assert sorted(chosen) == [_id(n) for n in "aabbcc"]
    # Hard: Ray 2.60 often placed soft ones elsewhere; a lost node's actors are started again by us.
    assert not any(s.soft for s in placement.spread_over_nodes(2))


def test_an_environments_monitors_cover_several_nodes(nodes: list[Any]) -> None:
    nodes += [_node("a", head=True), _node("b"), _node("c")]
    urls = [f"http://x/{n}" for n in range(5)]
    chunks = _monitor_chunks(urls, per_monitor=8)
    assert len(chunks) == 3 and sorted(u for c in chunks for u in c) == sorted(urls)
    assert len(_monitor_chunks(urls[:2], per_monitor=8)) == 2
    assert [len(c) for c in _monitor_chunks([f"u{n}" for n in range(20)], per_monitor=4)] == [4] * 5
    nodes[1:] = []
    assert _monitor_chunks(urls, per_monitor=8) == [urls]
