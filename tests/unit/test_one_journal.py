"""One journal per queen: what a driver compares with the running queen's own identity."""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.config import load_config, write_isolated_config
from engine.one_journal import config_fingerprint, identity_mismatch, queen_identity


def test_the_same_journal_and_configuration_may_attach(tmp_path: Path) -> None:
    config = load_config(write_isolated_config(tmp_path))
    mine = queen_identity(config, config.journal_path())
    assert identity_mismatch(dict(mine), mine, "ns") is None


def test_another_journal_is_refused_naming_both_and_the_namespace_key(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = load_config(write_isolated_config(tmp_path / "a"))
    b = load_config(write_isolated_config(tmp_path / "b"))
    running, mine = queen_identity(a, a.journal_path()), queen_identity(b, b.journal_path())
    problem = identity_mismatch(running, mine, "ns")
    assert problem is not None
    assert str(tmp_path / "a" / "journal.db") in problem and str(tmp_path / "b" / "journal.db") in problem
    assert "another journal and configuration" in problem  # the journal path is part of the configuration
    assert "`namespace:` key of enterprise_config.yaml, now 'ns'" in problem


def test_another_configuration_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    path = write_isolated_config(tmp_path)
    running = load_config(path)
    data = yaml.safe_load(path.read_text())
    data.setdefault("concurrency", {})["maxQueued"] = 7
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    mine = load_config(other)
    problem = identity_mismatch(
        queen_identity(running, running.journal_path()), queen_identity(mine, mine.journal_path()), "ns"
    )
    assert problem is not None and "uses another configuration:" in problem
    assert str(path) in problem and str(other) in problem


def test_comments_key_order_and_key_spelling_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text("concurrency:\n  maxQueued: 5\n  warmRunners: 1\nnamespace: x\n")
    second = tmp_path / "second.yaml"
    second.write_text("# the same settings\nnamespace: x\nconcurrency:\n  warm_runners: 1\n  max_queued: 5\n")
    third = tmp_path / "third.yaml"
    third.write_text("concurrency:\n  maxQueued: 6\n  warmRunners: 1\nnamespace: x\n")
    assert config_fingerprint(load_config(first)) == config_fingerprint(load_config(second))
    assert config_fingerprint(load_config(first)) != config_fingerprint(load_config(third))
