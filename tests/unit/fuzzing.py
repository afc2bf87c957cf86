"""Shared pieces of the fuzz tests (tests/unit/test_fuzz_*.py): value strategies, tree mutations, and the
check that an error is a clear one (a known type, a message naming the field, no traceback)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded so that every fuzz file stays within seconds on a loaded 2-core machine (CI runs them all).
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=False,
)
FEW = settings(FUZZ, max_examples=25)

# Keys a person might write: letters, digits, '-' and '_' (so that a reported path can be parsed back).
key_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-", min_size=1, max_size=12)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.sampled_from(["", "0", "-1", "5m", "30s", "1h", "nan", "yes", "canary", "env:X", "file:/x", "*"]),
)

garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(key_text, inner, max_size=3),
    ),
    max_leaves=6,
)

Path_ = list[str | int]


def paths(tree: Any, prefix: Path_ | None = None) -> Iterator[Path_]:
    """Every key path into a tree of dicts and lists (the root excluded)."""
    prefix = prefix or []
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield [*prefix, key]
            yield from paths(value, [*prefix, key])
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield [*prefix, index]
            yield from paths(value, [*prefix, index])


def parent_of(tree: Any, path: Sequence[str | int]) -> Any:
    node = tree
    for key in path[:-1]:
        node = node[key]
    return node


def mutate(tree: Any, path: Path_, operation: str, value: Any, key: str) -> Any:
    """A copy of ``tree`` with one change at ``path``: replace, delete, add an unknown key beside it, or
    wrap the value in a list (a common YAML slip)."""
    changed = copy.deepcopy(tree)
    parent, last = parent_of(changed, path), path[-1]
    if operation == "replace":
        parent[last] = value
    elif operation == "delete":
        del parent[last]
    elif operation == "unknown-key" and isinstance(parent, dict):
        parent[f"{key}x"] = value
    elif operation == "wrap":
        parent[last] = [parent[last]]
    else:
        parent[last] = value
    return changed


@st.composite
def mutations(draw: st.DrawFn, tree: Any) -> tuple[Path_, str, Any, Any]:
    """(path, operation, value, mutated tree) of one change somewhere in ``tree``."""
    every = list(paths(tree))
    path = draw(st.sampled_from(every))
    operation = draw(st.sampled_from(["replace", "replace", "delete", "unknown-key", "wrap"]))
    value = draw(garbage)
    key = draw(key_text)
    return path, operation, value, mutate(tree, path, operation, value, key)


_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def assert_clear(message: str) -> None:
    """No traceback, no empty message, no Python object dump in place of an explanation."""
    assert message.strip(), "an empty error message"
    assert not _TRACEBACK.search(message), message
    assert "object at 0x" not in message, message


def split_problem(line: str, source: str) -> tuple[str, str]:
    """(YAML path, explanation) of one ``<file>: <path>: <explanation>`` line."""
    assert line.startswith(f"{source}: "), line
    rest = line[len(source) + 2 :]
    path, sep, explanation = rest.partition(": ")
    assert sep and path and explanation.strip(), line
    return path, explanation


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def path_parts(path: str) -> list[str | int]:
    """``a.b[0].c`` -> ['a', 'b', 0, 'c']."""
    return [int(index) if index else name for name, index in _PART.findall(path)]


def names_a_written_key(data: Any, path: str) -> bool:
    """The path starts at a key written in ``data`` (deeper parts may name a key that is missing, or one
    a cross-check points at)."""
    if path == "(top level)":
        return True
    parts = path_parts(path)
    return bool(parts) and isinstance(data, dict) and parts[0] in data
