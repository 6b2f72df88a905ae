"""Helpers for the tests that use Redis: the shared server's URL, a unique
key prefix per test (deleted afterwards), and reading event frames."""

import contextlib
import time
import uuid

import redis

from .conftest import TIMEOUT, recv_json

#: The Redis every developer machine and CI runs (scripts/setup.sh starts it).
REDIS_URL = "redis://127.0.0.1:6379/0"


def delete_keys(url, prefix):
    """Delete every key a backplane with ``prefix`` wrote."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="{%s}:*" % prefix, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextlib.contextmanager
def unique_prefix(url=REDIS_URL):
    """A key prefix no other test uses; its keys are deleted on exit."""
    name = f"coda_ws_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        delete_keys(url, name)


def read_events(ws, count, timeout=TIMEOUT):
    """The next ``count`` event frames (any control frame fails the test)."""
    deadline = time.monotonic() + timeout
    events = []
    while len(events) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(events)} of {count} events; last {events[-3:]}")
        frame = recv_json(ws, remaining)
        assert "seq" in frame and frame.get("type") not in ("hello", "replay", "resume"), frame
        events.append(frame)
    return events
