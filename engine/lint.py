"""``lint``: checks of a configuration beyond what loading it checks (no Ray here).

Loading refuses what cannot work at all (unknown keys, impossible values, approver groups or alert channels
that are not defined). These checks find what loads but will not do what its author meant: approvals that
can never complete, grants to empty groups, platform settings their adapter refuses, alert channels no route
uses, hooks and routes for environments that do not exist, environments where nobody may deploy. Each
finding names its YAML path; errors make ``lint`` fail, warnings are shown.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

from engine.config import ConfigError, EnterpriseConfig, load_config
from engine.identity import AccessRole
from engine.models import PlatformConfig
from engine.secrets import REFERENCE

PlatformCheck = Callable[[PlatformConfig], list[tuple[str, str, bool]]]
ChannelCheck = Callable[[str], str | None]


class Finding(NamedTuple):
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def line(self, source: str) -> str:
        return f"{source}: {self.path}: {self.severity}: {self.message}"


def lint_file(
    path: str | None, platforms: PlatformCheck | None = None, channels: ChannelCheck | None = None
) -> tuple[str, list[Finding]]:
    """(source, findings) of a configuration file; a file that does not load gives its problems as errors."""
    try:
        config = load_config(path)
    except ConfigError as error:
        return error.source, [_load_problem(line, error.source) for line in error.problems]
    source = str(config.source)
    return source, lint(config, platforms, channels)


def _load_problem(line: str, source: str) -> Finding:
    rest = line.removeprefix(f"{source}: ")
    where, _, message = rest.partition(": ")
    return Finding(where, message) if message else Finding("(file)", rest)


def lint(
    config: EnterpriseConfig, platforms: PlatformCheck | None = None, channels: ChannelCheck | None = None
) -> list[Finding]:
    findings = [
        *_groups(config),
        *_deployers(config),
        *_alerting(config, channels),
        *_hooks(config),
    ]
    if platforms is not None:
        findings += _platforms(config, platforms)
    return findings


def _groups(config: EnterpriseConfig) -> Iterable[Finding]:
    used: set[str] = set()
    for name, environment in config.environments.items():
        workflow = environment.approval_workflow
        for index, group in enumerate(workflow.approver_groups):
            used.add(group)
            if workflow.required and not config.roles.get(group):
                yield Finding(
                    f"environments.{name}.approvalWorkflow.approverGroups[{index}]",
                    f"group '{group}' has no members: a deployment to {name} could never be approved",
                )
    for key, grants in config.access.items():
        for role in AccessRole:
            for index, member in enumerate(grants.members(role)):
                if member.startswith("@"):
                    used.add(member[1:])
                    if member[1:] in config.roles and not config.roles[member[1:]]:
                        yield Finding(
                            f"access.{key}.{role.value}[{index}]", f"group '{member[1:]}' has no members"
                        )
    for group, members in config.roles.items():
        if not members and group not in used:
            yield Finding(f"roles.{group}", "group has no members and is not used", "warning")


def _deployers(config: EnterpriseConfig) -> Iterable[Finding]:
    for name in config.environments:
        grants = [g for key, g in config.access.items() if fnmatch.fnmatchcase(name, key)]
        if config.access and not any(g.deployer for g in grants):
            yield Finding(
                f"access.{name}",
                f"nobody holds the deployer role in '{name}': only admins can deploy there",
                "warning",
            )


def _alerting(config: EnterpriseConfig, check: ChannelCheck | None) -> Iterable[Finding]:
    alerting = config.alerting
    routed = {name for route in alerting.routes for name in route.channels}
    for name, channel in alerting.channels.items():
        if name not in routed:
            yield Finding(f"alerting.channels.{name}", "no route sends alerts to this channel", "warning")
        if check is not None and not REFERENCE.match(channel.url):
            problem = check(channel.url)
            if problem:
                yield Finding(f"alerting.channels.{name}.url", problem)
    for index, route in enumerate(alerting.routes):
        yield from _patterns(config, route.environments, f"alerting.routes[{index}].environments")


def _hooks(config: EnterpriseConfig) -> Iterable[Finding]:
    for index, hook in enumerate(config.hooks):
        yield from _patterns(config, hook.environments, f"hooks[{index}].environments")


def _patterns(config: EnterpriseConfig, patterns: list[str], path: str) -> Iterable[Finding]:
    for position, pattern in enumerate(patterns):
        if not any(fnmatch.fnmatchcase(name, pattern) for name in config.environments):
            yield Finding(f"{path}[{position}]", f"'{pattern}' matches no configured environment", "warning")


def _platforms(config: EnterpriseConfig, check: PlatformCheck) -> Iterable[Finding]:
    """Settings the platform's adapter refuses: an error, or a warning when they are only not filled in yet
    (the platform cannot be used until they are)."""
    for name, platform in config.platforms.items():
        for where, problem, missing in check(platform):
            if missing:
                message = f"{problem}: platform '{name}' cannot be used until this is set"
                yield Finding(f"platforms.{name}.settings.{where}", message, "warning")
            else:
                yield Finding(f"platforms.{name}.settings.{where}", problem)
