"""Run a Python program as a child process and read its output without blocking.

Used by the example and CLI tests. Always call :meth:`Child.kill` in a
``finally`` (or use the child as a context manager): it is a no-op when the
child already exited.
"""

import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from .conftest import TIMEOUT

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Deadline for waits that involve a child process: starting an interpreter
#: and importing Flask can take seconds on a loaded two-core machine. Tests
#: that pass never wait this long.
CHILD_TIMEOUT = 30.0


def _default_signals():
    # A child started from a non-interactive shell's background job inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt: restore it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """A running ``python ARGS...``; stdout and stderr are read by two threads."""

    def __init__(self, *args, cwd=None, executable=None):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [str(executable or sys.executable), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=str(cwd or ROOT),
            env=env,
            preexec_fn=_default_signals,
        )
        self.stdout_lines = []
        self.stderr_lines = []
        self._lines = queue.Queue()
        self._readers = [
            threading.Thread(
                target=self._read,
                args=(self.proc.stdout, self.stdout_lines, self._lines),
                name="child-stdout",
                daemon=True,
            ),
            threading.Thread(
                target=self._read,
                args=(self.proc.stderr, self.stderr_lines, None),
                name="child-stderr",
                daemon=True,
            ),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines, out):
        for line in stream:
            lines.append(line)
            if out is not None:
                out.put(line)
        if out is not None:
            out.put(None)  # end of output

    def wait_for_output(self, pattern, timeout=CHILD_TIMEOUT):
        """The first match of regex ``pattern`` in a new stdout line."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no output matching {pattern!r} within {timeout} s; {self.describe()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"child ended without output matching {pattern!r}; {self.describe()}")
            match = re.search(pattern, line)
            if match:
                return match

    def ws_url(self, timeout=CHILD_TIMEOUT):
        """The first ``ws://`` URL the child prints."""
        return self.wait_for_output(r"(ws://[^\s),]+)", timeout).group(1)

    def interrupt(self):
        """Send SIGINT, as Ctrl-C does."""
        self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout=CHILD_TIMEOUT):
        """The exit code, once the child has exited (fails after ``timeout`` s)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"child still running after {timeout} s; {self.describe()}") from None
        for reader in self._readers:
            reader.join(TIMEOUT)
        return code

    def describe(self):
        out = "".join(self.stdout_lines)[-2000:]
        err = "".join(self.stderr_lines)[-4000:]
        return f"stdout:\n{out}\nstderr:\n{err}"

    def kill(self):
        """Kill the child if it still runs and reap it (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for reader in self._readers:
            reader.join(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.kill()
