"""The package as it would be published: the sdist and the wheel build without a
setuptools warning, pass ``twine check`` and ``check-wheel-contents``, hold what they
need (and no half of the test suite), and the wheel installed into a fresh virtualenv
serves the demo and the dashboard."""

import pathlib
import subprocess
import sys
import tarfile
import urllib.request
import venv
import zipfile

import pytest

from tests._proc import CHILD_TIMEOUT, ROOT, Child
from tests.conftest import connect, recv_json


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel, built from this checkout (no network: the
    development environment's setuptools), and the build's output."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel, proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_build_has_no_setuptools_warning(dist):
    """Neither build step warns (package data, license metadata, manifest)."""
    _, _, output = dist
    warnings = [
        line
        for line in output.splitlines()
        if "warning" in line.lower() and "byte-compiling is disabled" not in line
    ]
    assert not warnings, warnings


@pytest.mark.timeout(300)
def test_twine_and_check_wheel_contents_pass(dist):
    """The metadata renders on PyPI (twine check) and the wheel has no
    duplicate, empty or misplaced files (check-wheel-contents)."""
    sdist, wheel, _ = dist
    twine = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert twine.returncode == 0, twine.stdout + twine.stderr
    contents = subprocess.run(
        [sys.executable, "-m", "check_wheel_contents", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert contents.returncode == 0, contents.stdout + contents.stderr


@pytest.mark.timeout(300)
def test_sdist_and_wheel_hold_what_they_need(dist):
    """The sdist has the licence, the changelog, the docs and the examples, and
    no test file; the wheel has the package with its static files and py.typed."""
    sdist, wheel, _ = dist
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "docs/index.md",
        "docs/dashboard.png",
        "examples/basic_server.py",
        "coda_ws/server.py",
        "coda_ws/static/index.html",
    ):
        assert needed in names, needed
    assert not [name for name in names if name.startswith("tests/") or name == "conftest.py"]
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    for needed in (
        "coda_ws/py.typed",
        "coda_ws/static/index.html",
        "coda_ws/static/coda-ws-client.js",
        "coda_ws/static/vendor/uPlot.iife.min.js",
    ):
        assert needed in files, needed
    assert not [name for name in files if name.startswith("tests/")]


@pytest.mark.timeout(600)
def test_wheel_in_a_fresh_virtualenv_serves_the_demo(dist, tmp_path):
    """pip installs the wheel into a new virtualenv (dependencies from the
    package index); its `coda-ws demo` serves the dashboard and the stream,
    from a directory outside the checkout, and stops on Ctrl-C."""
    _, wheel, _ = dist
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=540
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    script = home / "bin" / "coda-ws"
    with Child(script, "demo", "--port", "0", "--pace", "0.1", cwd=tmp_path, executable=python) as demo:
        url = demo.ws_url()
        http = url.replace("ws://", "http://", 1)
        with urllib.request.urlopen(http, timeout=CHILD_TIMEOUT) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        with connect(url + "?v=1", open_timeout=CHILD_TIMEOUT) as ws:
            assert recv_json(ws, CHILD_TIMEOUT)["type"] == "hello"
            assert recv_json(ws, CHILD_TIMEOUT)["type"] == "replay"
        demo.interrupt()
        assert demo.wait() == 0
    assert pathlib.Path(python).exists()
