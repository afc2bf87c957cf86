#!/usr/bin/env bash
# Line and branch coverage of the test suite, the Ray actors included:
#   bash scripts/coverage.sh                      # the whole suite (what the README's figures come from)
#   bash scripts/coverage.sh tests/unit           # any pytest arguments: here the unit tests only
# The actors run in Ray's worker processes. COVERAGE_PROCESS_START makes every Python process started from
# here (Ray's workers, `ray start` nodes, CLI subprocesses) record coverage at start-up, through the .pth
# hook coverage.py installs in site-packages; pyproject.toml's [tool.coverage.run] (parallel, patch =
# subprocess and _exit, sigterm) gives each process its own data file and saves it when a worker ends
# without running atexit. Ray ends its workers with a C-level exit that saves nothing, and the chaos tests
# SIGKILL actors on purpose: the actors' processes save every 2 s instead (actors/coverage_save.py, README
# "Coverage"), so such a process loses at most its last 2 s.
# Writes the report to the terminal and a summary (per package and file, with the commit and the arguments)
# to benchmarks/results/coverage.json; exits non-zero when the tests fail or engine/ is under 95% of lines.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
python3 - <<'PY' || exit 2
import pathlib, site, sys
hooks = [p for d in site.getsitepackages() for p in pathlib.Path(d).glob("*.pth") if "process_startup" in p.read_text()]
if not hooks:
    sys.exit("coverage.py's process start-up hook (a .pth calling coverage.process_startup) is not installed: "
             "pip install 'coverage>=7.7'")
PY
# COVERAGE_DATA_DIR keeps the processes' data files (to combine with another run's); else a new temp dir.
DATA=${COVERAGE_DATA_DIR:-$(mktemp -d /tmp/orch-coverage.XXXXXX)}
mkdir -p "$DATA"
export COVERAGE_FILE=$DATA/.coverage
export COVERAGE_PROCESS_START=$ROOT/pyproject.toml
python3 -m pytest -q -p no:cacheprovider "$@"
tests=$?
unset COVERAGE_PROCESS_START  # combining and reporting are not measured
python3 -m coverage combine --quiet --keep "$DATA" || exit 2
python3 -m coverage report --skip-covered
python3 scripts/coverage_summary.py --out "${COVERAGE_OUT:-benchmarks/results/coverage.json}" -- "$@"
summary=$?
[ -n "${COVERAGE_DATA_DIR:-}" ] || rm -rf "$DATA"
[ "$tests" -eq 0 ] || { echo "coverage: the tests failed (exit $tests)" >&2; exit "$tests"; }
exit "$summary"
