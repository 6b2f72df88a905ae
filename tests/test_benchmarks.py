"""Smoke test of the benchmark suite: it runs end to end and prints its table.

Performance itself is measured by ``benchmarks/run.py``, never asserted here:
this only checks that the suite's machinery (server process, Node.js load
client, control channel, table) works, with coda_ws alone so that the peers
need not be installed.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

# Outside CI a machine without Node.js skips this test; under CI (scripts/setup.sh
# installs Node.js and the packages) a missing load client is a failure, not a skip.
_IN_CI = bool(os.environ.get("CI"))
needs_load_client = [
    pytest.mark.skipif(shutil.which("node") is None and not _IN_CI,
                       reason="Node.js is not installed (the load client needs it)"),
    pytest.mark.skipif(
        not (BENCHMARKS / "node_modules" / "ws").is_dir() and not _IN_CI,
        reason="the load client's packages are missing: npm ci --prefix benchmarks",
    ),
]


@needs_load_client[0]
@needs_load_client[1]
@pytest.mark.timeout(180)
def test_quick_run_prints_the_table(tmp_path):
    """`run.py --quick --scenarios burst1 --peers coda_ws` finishes and prints a
    results row for coda_ws, the targets, and writes the baseline file."""
    baseline = tmp_path / "baseline.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--scenarios", "burst1", "--peers", "coda_ws",
         "--save-baseline", str(baseline)],
        capture_output=True, text=True, timeout=170, cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "scenario" in out and "msgs/s" in out and "CPU/msg" in out
    rows = [line for line in out.splitlines() if line.startswith("burst1") and "coda_ws" in line]
    assert rows and "%" in rows[0], out
    assert "Targets" in out
    assert baseline.is_file()


def test_unknown_scenario_is_refused():
    """A misspelt scenario name is an argument error naming the known ones."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--scenarios", "burst7"],
        capture_output=True, text=True, timeout=60, cwd=str(ROOT),
    )
    assert proc.returncode == 2
    assert "unknown scenario burst7" in proc.stderr and "burst100" in proc.stderr
