#!/usr/bin/env python3
"""Summarise a py-spy profile in collapsed-stack form (``run.py --profile DIR``).

    python benchmarks/profile_summary.py DIR/coda_ws-burst100-120000.txt [--top 25]

Prints where the samples went: by thread role (the thread name with its
per-client suffix removed, so 100 writer threads count as one role), by
function (self time: the innermost frame) and by function including callees.
Idle samples (a thread blocked in a wait) are counted separately, so the
percentages describe CPU, not waiting.
"""

import argparse
import collections
import re
import sys

_IDLE_LEAVES = (
    "wait (threading.py",
    "select (",
    "poll (",
    "_wait_for_tstate_lock",
    "sleep (",
    "accept (",
    "readline (",
    "recv (",
    "recv_into (",
    "_worker (concurrent",
    "get (queue.py",
)


def _role(thread):
    # "thread (22761): coda-ws-client:0e3c78fa" -> "coda-ws-client"
    name = thread.split("): ", 1)[1] if "): " in thread else thread
    return re.sub(r"[:\-]?[0-9a-f]{6,}$|[:\-]\d+$|\s*\(.*\)$", "", name)


def _strip_line(frame):
    # "send (coda_ws/connection.py:71)" -> "send (coda_ws/connection.py)"
    return re.sub(r":\d+\)$", ")", frame)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lines", action="store_true", help="keep line numbers (one entry per line)")
    args = parser.parse_args(argv)
    by_role = collections.Counter()
    self_time = collections.Counter()
    total_time = collections.Counter()
    idle = 0
    samples = 0
    with open(args.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            frames = stack.split(";")
            if len(frames) < 2:
                # No Python frame: py-spy's view of a thread blocked in C (the
                # harness's control loop reading stdin): not CPU.
                idle += count
                continue
            if not args.lines:
                frames = [frames[0]] + [_strip_line(f) for f in frames[1:]]
            leaf = frames[-1]
            if any(marker in leaf for marker in _IDLE_LEAVES):
                idle += count
                continue
            samples += count
            by_role[_role(frames[0])] += count
            self_time[leaf] += count
            for frame in set(frames[1:]):
                total_time[frame] += count
    if not samples:
        sys.exit("no active samples")
    print(f"{samples} active samples ({idle} idle samples not counted)\n")
    print("by thread role:")
    for role, count in by_role.most_common(10):
        print(f"  {100 * count / samples:5.1f}%  {role}")
    print("\nself time (innermost frame):")
    for frame, count in self_time.most_common(args.top):
        print(f"  {100 * count / samples:5.1f}%  {frame}")
    print("\ninclusive time:")
    for frame, count in total_time.most_common(args.top):
        print(f"  {100 * count / samples:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
