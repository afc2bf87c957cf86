"""Fuzzing ``enterprise_config.yaml`` (engine.config): the shipped file and generated ones, mutated (wrong
types, unknown keys, out-of-range values, keys deleted, camelCase and snake_case mixed, garbage text). Each
one loads, or fails with a ConfigError whose every line is ``<file>: <yaml.path>: <explanation>`` starting
at a key the file holds; never another exception, never a traceback."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic.alias_generators import to_camel, to_snake

from engine.config import DEFAULT_CONFIG_FILE, ConfigError, EnterpriseConfig, load_config
from tests.unit.fuzzing import (
    FEW,
    FUZZ,
    assert_clear,
    garbage,
    key_text,
    mutations,
    names_a_written_key,
    split_problem,
)

SHIPPED_TEXT = DEFAULT_CONFIG_FILE.read_text(encoding="utf-8")
SHIPPED: dict[str, Any] = yaml.safe_load(SHIPPED_TEXT)
SOURCE = "<fuzz>"
# Sections whose keys are model fields (not names people choose: environments, roles, platforms, pipelines).
MODEL_SECTIONS = ("strategyDefaults", "concurrency", "health", "metrics", "supervision", "audit", "features")


def _outcome(data: Any) -> EnterpriseConfig | None:
    """The configuration, or None after checking that the refusal is a clear one."""
    try:
        return EnterpriseConfig.from_mapping(data, SOURCE)
    except ConfigError as error:
        _check_refusal(error, SOURCE, data)
        return None


def _check_refusal(error: ConfigError, source: str, data: Any) -> None:
    message = str(error)
    assert_clear(message)
    assert error.problems and message == "\n".join(error.problems)
    for line in error.problems:
        path, _ = split_problem(line, source)
        assert names_a_written_key(data, path), f"{path!r} is not a key of the file: {line}"


@given(mutations(SHIPPED))
@FUZZ
def test_one_change_to_the_shipped_file_loads_or_is_refused_at_its_path(
    change: tuple[Any, str, Any, Any],
) -> None:
    _path, _operation, _value, mutated = change
    _outcome(mutated)


@given(
    st.dictionaries(
        st.one_of(st.sampled_from(sorted(SHIPPED)), key_text),
        st.one_of(garbage, st.sampled_from([copy.deepcopy(v) for v in SHIPPED.values()])),
        max_size=6,
    )
)
@FUZZ
@example({"trustedKeys": {"release": "ssh-foo AAAA"}})  # an unsupported key type: was UnsupportedAlgorithm
@example({"environments": {"1": None}})
@example({"concurrency": {"maxConcurrentDeployments": float("nan")}})
def test_generated_files_load_or_are_refused_at_their_path(data: dict[str, Any]) -> None:
    _outcome(data)


@given(st.one_of(garbage, st.lists(garbage, max_size=2)))
@FEW
def test_a_file_that_is_not_a_mapping_is_refused_at_the_top_level(data: Any) -> None:
    if isinstance(data, dict):
        _outcome(data)
        return
    try:
        EnterpriseConfig.from_mapping(data, SOURCE)
    except ConfigError as error:
        assert error.problems == [f"{SOURCE}: (top level): {error.problems[0].split(': ', 2)[2]}"]
        assert "expected a mapping" in str(error)
    else:
        raise AssertionError(f"{data!r} loaded as a configuration")


def _respell(tree: Any, pick: st.DataObject) -> Any:
    """Each key of a model section spelled at random in camelCase or snake_case."""
    if isinstance(tree, dict):
        spelled = {}
        for key, value in tree.items():
            spelling = pick.draw(st.sampled_from([to_camel, to_snake, str]))(key)
            spelled[spelling] = _respell(value, pick)
        return spelled
    if isinstance(tree, list):
        return [_respell(item, pick) for item in tree]
    return tree


@given(st.data())
@FUZZ
def test_camel_and_snake_case_mixed_load_the_same_configuration(pick: st.DataObject) -> None:
    sections = pick.draw(st.lists(st.sampled_from(MODEL_SECTIONS), min_size=1, unique=True))
    respelled = dict(SHIPPED)
    for section in sections:
        respelled[section] = _respell(SHIPPED[section], pick)
    shipped = EnterpriseConfig.from_mapping(SHIPPED, SOURCE)
    assert EnterpriseConfig.from_mapping(respelled, SOURCE).model_dump() == shipped.model_dump()


@given(st.data())
@FEW
def test_a_number_out_of_range_is_refused_naming_its_key(pick: st.DataObject) -> None:
    section, key, bad = pick.draw(
        st.sampled_from(
            [
                ("concurrency", "maxConcurrentDeployments", st.integers(min_value=101)),
                ("concurrency", "maxConcurrentDeployments", st.integers(max_value=0)),
                ("concurrency", "warmRunners", st.integers(max_value=-1)),
                ("health", "unhealthyThreshold", st.integers(max_value=0)),
                ("metrics", "prometheusPort", st.integers(min_value=65_536)),
                ("supervision", "crashLoopRestarts", st.integers(max_value=0)),
            ]
        )
    )
    data = copy.deepcopy(SHIPPED)
    data[section][key] = pick.draw(bad)
    try:
        EnterpriseConfig.from_mapping(data, SOURCE)
    except ConfigError as error:
        _check_refusal(error, SOURCE, data)
        assert any(line.startswith(f"{SOURCE}: {section}.{key}: ") for line in error.problems), error
    else:
        raise AssertionError(f"{section}.{key}: {data[section][key]} was accepted")


@given(
    st.data(),
    st.sampled_from(["truncate", "insert", "duplicate-line", "indent"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
)
@FEW
@example(None, "insert", "\t")  # a tab where YAML wants spaces
def test_damaged_yaml_text_loads_or_is_refused_with_its_line(
    pick: st.DataObject | None, how: str, text: str
) -> None:
    position = pick.draw(st.integers(0, len(SHIPPED_TEXT))) if pick else SHIPPED_TEXT.index("  staging:")
    lines = SHIPPED_TEXT.splitlines(keepends=True)
    if how == "truncate":
        damaged = SHIPPED_TEXT[:position]
    elif how == "insert":
        damaged = SHIPPED_TEXT[:position] + text + SHIPPED_TEXT[position:]
    else:
        line = (pick.draw(st.integers(0, len(lines) - 1)) if pick else 20) % len(lines)
        extra = lines[line] if how == "duplicate-line" else " " + lines[line]
        damaged = "".join([*lines[: line + 1], extra, *lines[line + 1 :]])
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "enterprise_config.yaml"
        file.write_text(damaged, encoding="utf-8")
        try:
            load_config(file)
        except ConfigError as error:
            assert_clear(str(error))
            assert all(line.startswith(f"{file}: ") for line in error.problems), error


def test_a_missing_or_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.yaml", tmp_path):
        try:
            load_config(path)
        except ConfigError as error:
            assert str(error).startswith(f"{path}: "), error
        else:
            raise AssertionError(f"{path} loaded")
