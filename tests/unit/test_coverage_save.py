"""actors/coverage_save.py: an actor's process ended without Python's exit handlers keeps its coverage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import coverage

REPO = Path(__file__).resolve().parents[2]

# A process measured by coverage.py that ends the way Ray ends a worker: no atexit, no os._exit (SIGKILL).
PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, time
    import coverage
    measured = coverage.Coverage(data_file=sys.argv[1], config_file=False, source_pkgs=["engine"])
    measured.start()
    from engine import quantities
    saving = False
    if sys.argv[2] == "on":  # importing the actors starts the saving, as in a Ray worker
        from actors import coverage_save
        saving = coverage_save.save_periodically()
    quantities.show_bytes(2048)
    print(saving, flush=True)
    time.sleep(2.5)  # past SAVE_INTERVAL_S
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run(tmp_path: Path, interval: str) -> tuple[str, list[str]]:
    data_file = tmp_path / f".coverage-{interval}"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(data_file), interval],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == -9, done.stderr
    if not data_file.exists():
        return done.stdout.strip(), []
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    return done.stdout.strip(), sorted(Path(f).name for f in data.measured_files())


def test_a_killed_process_keeps_what_it_measured(tmp_path: Path) -> None:
    saving, files = _run(tmp_path, "on")
    assert saving == "True"
    assert "quantities.py" in files


def test_without_the_saver_a_killed_process_loses_it(tmp_path: Path) -> None:
    """The control: what the saver is for (the data files of Ray's workers came back empty)."""
    saving, files = _run(tmp_path, "off")
    assert saving == "False"
    assert "quantities.py" not in files


def test_nothing_happens_where_coverage_does_not_run() -> None:
    program = (
        "import sys; from actors import coverage_save; "
        "print(coverage_save.save_periodically(), 'coverage' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert done.stdout.split() == ["False", "False"], done.stderr
