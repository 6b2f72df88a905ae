"""Smoke test of the benchmark suite: it runs end to end and prints its table.

Performance itself is measured by ``benchmarks/run.py``, never asserted here:
this only checks that the suite's machinery (server process, Node.js load
client, control channel, table) works, with coda_ws alone so that the peers
need not be installed.
"""

import base64
import hashlib
import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _load_server_module(name):
    """Import benchmarks/servers/<name>.py (which finds common.py beside it),
    leaving sys.path and sys.modules as they were."""
    path = BENCHMARKS / "servers" / f"{name}.py"
    saved_path, had_common = list(sys.path), "common" in sys.modules
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
        if not had_common:
            sys.modules.pop("common", None)
    return module


# A machine without Node.js skips these tests; scripts/setup.sh installs Node.js and the
# packages, and under CI a skip fails (conftest.py).
needs_load_client = [
    pytest.mark.skipif(
        shutil.which("node") is None,
        reason="Node.js is not installed (the load client needs it)",
    ),
    pytest.mark.skipif(
        not (BENCHMARKS / "node_modules" / "ws").is_dir(),
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
        [
            sys.executable,
            str(BENCHMARKS / "run.py"),
            "--quick",
            "--scenarios",
            "burst1",
            "--peers",
            "coda_ws",
            "--save-baseline",
            str(baseline),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=str(ROOT),
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
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert proc.returncode == 2
    assert "unknown scenario burst7" in proc.stderr and "burst100" in proc.stderr


@needs_load_client[0]
@needs_load_client[1]
@pytest.mark.timeout(300)
def test_quick_pipeline5_and_the_floor(tmp_path):
    """`run.py --quick --scenarios burst1,pipeline5 --peers coda_ws,raw` finishes:
    the floor's rows and coda_ws/raw ratio rows, pipeline5's slowdown column
    and note, and issue 15's target rows are printed (values not judged)."""
    baseline = tmp_path / "run.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "run.py"),
            "--quick",
            "--scenarios",
            "burst1,pipeline5",
            "--peers",
            "coda_ws,raw",
            "--save-baseline",
            str(baseline),
        ],
        capture_output=True,
        text=True,
        timeout=290,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    lines = out.splitlines()
    shown = [line for line in lines if line.startswith(("burst1", "pipeline5")) or "slowdown" in line]
    print("\n".join(shown))  # pytest -s shows what the run measured
    assert "slowdown" in lines[next(i for i, line in enumerate(lines) if line.startswith("scenario"))]
    for scenario in ("burst1", "pipeline5"):
        for peer in ("coda_ws ", "raw (floor)", "coda_ws/raw"):
            row = [line for line in lines if line.startswith(scenario) and peer in line]
            assert row and "failed" not in row[0] and "skipped" not in row[0], out
    pipeline_row = next(line for line in lines if line.startswith("pipeline5") and "coda_ws " in line)
    assert pipeline_row.rstrip().endswith("%"), pipeline_row  # the slowdown cell
    assert any(
        line.strip().startswith("pipeline5 coda_ws: run 1: work") and "slowdown" in line for line in lines
    ), out
    assert "floor (raw RFC 6455, not a product)" in out
    assert "pipeline5: compute slowdown <= 1 %" in out and "rate100: latency p99 <= 1.5x raw" in out
    assert baseline.is_file()


def test_floor_handshake_and_frames():
    """The floor server answers RFC 6455's example key with its example accept
    value, and frames text with the 7-bit, 16-bit and 64-bit length forms."""
    raw = _load_server_module("raw_server")
    assert raw.accept_value(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    key = base64.b64encode(b"0123456789abcdef")
    assert raw.accept_value(key) == base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    assert raw.text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert raw.text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert raw.text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    request = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13"
    )
    assert raw._websocket_key(request) == key
    assert raw._websocket_key(request.replace(b"GET", b"POST")) is None
    assert raw._websocket_key(request.replace(b"Upgrade: WebSocket\r\n", b"")) is None


def test_pipeline_run_reports_both_times_and_the_slowdown():
    """The pipeline order runs the work in alternating pairs, emits only while a
    streamed run lasts, and reports every time, the slowdowns and the count
    (structure only: no timing is judged)."""
    common = _load_server_module("common")
    calls = []
    reply = common._pipeline_run(
        lambda i, emit_ns: calls.append(i), 100_000, 2000.0, {"passes": 3, "pairs": 3}
    )
    assert reply["emitted"] == len(calls) and calls == list(range(len(calls)))
    pipeline = reply["pipeline"]
    assert pipeline["passes"] == 3 and pipeline["pairs"] == 3 and pipeline["cap_reached"] == 0
    assert (
        len(pipeline["baseline_s"]) == len(pipeline["streamed_s"]) == len(pipeline["pair_slowdown_pct"]) == 3
    )
    assert all(t > 0 for t in pipeline["baseline_s"] + pipeline["streamed_s"])
    assert pipeline["slowdown_pct"] in pipeline["pair_slowdown_pct"]  # the median of an odd count
    assert pipeline["stream_s"] == pytest.approx(sum(pipeline["streamed_s"]))
    # A cap of one event, and work long enough to outlast it.
    capped = common._pipeline_run(lambda i, emit_ns: None, 1, 2000.0, {"passes": 40, "pairs": 1})
    assert capped["emitted"] == 1 and capped["pipeline"]["cap_reached"] == 1
