"""Fixtures and helpers for the coda_ws.aio tests: servers on 127.0.0.1:0 started
and stopped by the test's own event loop, and waits with deadlines."""

import asyncio

import pytest_asyncio

from coda_ws.aio import CodaWebSocketServer

from ..conftest import TIMEOUT


async def wait_until(condition, timeout=TIMEOUT, message="condition"):
    """Poll ``condition()`` on the loop until true, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {message() if callable(message) else message}")
        await asyncio.sleep(0.005)


@pytest_asyncio.fixture
async def aio_server_factory():
    """Make started coda_ws.aio servers on 127.0.0.1:0; every one is stopped after the test."""
    servers = []

    async def make(**kwargs):
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        server = CodaWebSocketServer(**kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture
async def aio_server(aio_server_factory):
    """A started coda_ws.aio server with default options."""
    return await aio_server_factory()
