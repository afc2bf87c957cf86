"""Secrets for a service's environment: the journal keeps references (``env:NAME``, ``file:/path``), never
values; adapters resolve them only when they start a replica."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.models import Artifact

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)
REFERENCE = re.compile(r"^(env|file):(.+)$")


def looks_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def resolve(name: str, reference: str, section: str = "secretEnv") -> str:
    """The value behind one reference; ValueError naming the setting (``section.name``) and the variable or
    file, never the value, when it is missing."""
    return read_reference(f"{section}.{name}", reference)


def read_reference(field: str, reference: str) -> str:
    """The value behind ``env:NAME`` or ``file:/path``; ValueError naming ``field`` and where it looked."""
    match = REFERENCE.match(reference)
    if match is None:
        raise ValueError(f"{field}: '{reference}' is not a reference: use env:NAME or file:/path")
    kind, where = match.groups()
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise ValueError(f"{field}: the environment variable {where} is not set where it runs")
        return value
    try:
        return Path(where).expanduser().read_text().rstrip("\n")
    except OSError as error:
        raise ValueError(f"{field}: cannot read {where}: {error.strerror}") from error


def value_or_reference(field: str, value: str) -> str:
    """``value`` itself, or what its reference names when it is one (``env:NAME``, ``file:/path``)."""
    return read_reference(field, value) if REFERENCE.match(value) else value


def runtime_env(artifact: Artifact) -> dict[str, str]:
    """The environment a replica gets: the plain variables plus the resolved secrets."""
    return {**artifact.env, **{name: resolve(name, ref) for name, ref in artifact.secret_env.items()}}
