"""Quantities as people write them in configuration: CPU in cores or millicores, memory and disk in bytes.

Kubernetes' spellings are accepted (``"500m"`` CPU; ``"512Mi"``, ``"1Gi"``, ``"2G"`` bytes), and so are the
``MiB``/``GiB`` of most other tools and plain numbers (cores, bytes). Nothing here imports the models: they
import this.
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = r"(\d+(?:\.\d+)?)"
_CPU = re.compile(rf"^\s*{_NUMBER}\s*(m)?\s*$")
_BYTES = re.compile(rf"^\s*{_NUMBER}\s*([KMGTP]i?B?|[kKMGTP]|B)?\s*$")
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_SHOWN = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_cpu(value: Any) -> Any:
    """Cores as a float: ``0.5``, ``"0.5"``, ``"500m"``; anything else is left for the model to refuse."""
    if isinstance(value, str):
        match = _CPU.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a CPU quantity: use cores (0.5) or millicores ('500m')")
        number = float(match.group(1))
        return number / 1000 if match.group(2) else number
    return value


def parse_bytes(value: Any) -> Any:
    """Bytes as an int: ``536870912``, ``"512Mi"``, ``"512MiB"``, ``"1G"`` (decimal), ``"100k"``."""
    if isinstance(value, str):
        match = _BYTES.match(value)
        if not match:
            raise ValueError(
                f"'{value}' is not a size: use bytes or a number with a unit such as '512Mi', '1Gi', '2G'"
            )
        number, unit = float(match.group(1)), (match.group(2) or "").removesuffix("B")
        if not unit:
            return int(number)
        table = _BINARY if unit.endswith("i") else _DECIMAL
        return int(number * table[unit[0].upper()])
    return value


def show_bytes(count: int) -> str:
    """A size for people: '512 MiB', '1.5 GiB', '300 bytes'."""
    for unit, size in _SHOWN:
        if abs(count) >= size:
            return f"{count / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"


def show_cpu(cores: float) -> str:
    """'0.5 CPU', '2 CPU'."""
    return f"{cores:.3f}".rstrip("0").rstrip(".") + " CPU"


def kubernetes_cpu(cores: float) -> str:
    """Millicores, the form the API server keeps: 0.5 -> '500m'."""
    return f"{round(cores * 1000)}m"


def kubernetes_cpu_cores(text: str) -> float:
    """A quantity the API server reports ('2', '500m', '1.5') in cores."""
    return float(parse_cpu(text))


def kubernetes_bytes(text: str) -> int:
    """A quantity the API server reports ('512Mi', '1G', '1073741824') in bytes."""
    return int(parse_bytes(text))
