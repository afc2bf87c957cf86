"""Which git commit holds a configuration file exactly as it was loaded (for the compliance record)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from engine.models import ConfigVersion

GIT_TIMEOUT_S = 5.0


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def config_version(path: Path | None, loaded_sha256: str | None) -> ConfigVersion:
    """The loaded file's digest, and the commit whose version of the file is that content: ``committed``
    when HEAD holds exactly what was loaded, ``modified`` when the file differs from HEAD (or changed since
    it was loaded), ``not committed`` when git does not track it, ``not under git`` outside a repository."""
    if path is None or loaded_sha256 is None:
        return ConfigVersion(path=str(path) if path else None, sha256=loaded_sha256, git_state="unknown")
    version = ConfigVersion(path=str(path), sha256=loaded_sha256, git_state="not under git")
    try:
        content = path.read_bytes()
    except OSError:
        return version.model_copy(update={"git_state": "unreadable since it was loaded"})
    if hashlib.sha256(content).hexdigest() != loaded_sha256:
        return version.model_copy(update={"git_state": "modified since it was loaded"})
    top = _git(path.parent, "rev-parse", "--show-toplevel")
    if top is None:
        return version
    relative = path.resolve().relative_to(Path(top).resolve()).as_posix()
    committed_blob = _git(Path(top), "rev-parse", f"HEAD:{relative}")
    if committed_blob is None:
        return version.model_copy(update={"git_state": "not committed"})
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()
    if blob != committed_blob:
        return version.model_copy(update={"git_state": "modified"})
    commit = _git(Path(top), "log", "-n", "1", "--format=%H", "--", relative)
    return version.model_copy(
        update={"git_commit": commit, "git_state": "committed" if commit else "not committed"}
    )
