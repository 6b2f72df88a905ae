"""Every Python code block of the documentation (``docs/*.md``) and of the README is run
by the test suite, with Sybil: blocks of one page share a namespace and run in order.

Pages show servers on their defaults (``CodaWebSocketServer()``: localhost:8765); while
the blocks run, ``CODA_WS_PORT=0`` (the environment variable every server option reads,
see docs/configuration.md) makes those servers take a free port instead, so the suite never
collides with a server already running. Redis keys the pages write (prefix
``coda_ws_docs``) are deleted afterwards. No block is skipped.
"""

import os

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

_DOCS_PREFIX = "coda_ws_docs"

#: Under CI (``.ci/run`` exports ``CI=1``) nothing may be skipped: the browser,
#: Redis, tmpfs, load-client and platform tests all run for real there, and a
#: skip that fires (a missing Chromium, a low ``ulimit -n``...) fails instead,
#: with its reason. On a developer's machine a skip stays a skip.
_NO_SKIPS = bool(os.environ.get("CI"))


def _skip_reason(longrepr):
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if _NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report):
    # A module-level skip in a test module surfaces as a skipped collect report (one raised
    # while a conftest is imported does not: tests/browser/conftest.py fails itself under CI).
    if _NO_SKIPS and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {_skip_reason(report.longrepr)}"


def _setup(namespace):
    namespace["__name__"] = "__main__"  # as in a script: Flask(__name__) finds its root folder
    namespace["_saved_port"] = os.environ.get("CODA_WS_PORT")
    os.environ["CODA_WS_PORT"] = "0"


def _teardown(namespace):
    saved = namespace.get("_saved_port")
    if saved is None:
        os.environ.pop("CODA_WS_PORT", None)
    else:
        os.environ["CODA_WS_PORT"] = saved
    for value in list(namespace.values()):  # stop whatever a page left running
        for method in ("stop", "close"):
            stop = getattr(value, method, None)
            if callable(stop) and type(value).__module__.startswith("coda_ws"):
                try:
                    stop()
                except Exception:  # a page's object that is already stopped, or not stoppable that way
                    pass
                break
    try:
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(match="{%s}:*" % _DOCS_PREFIX, count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except Exception:  # no Redis here: the pages that need it have failed already, loudly
        pass


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser()],
    patterns=["docs/*.md", "README.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
