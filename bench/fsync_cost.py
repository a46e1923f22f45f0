#!/usr/bin/env python3
"""CPU and wall time of append + fdatasync on this machine, by bytes per sync and files per group.

    python3 bench/fsync_cost.py [DIRECTORY]   (default: a scratch directory under ./data)

A group commit appends to some files and syncs each; this measures what that costs the process
(user + system CPU from getrusage) and how long it takes, per group, for the shapes the commit
thread has (docs/BENCHMARKS.md, session 9). Run it on the disk the gateway's data folder is on.
"""
import os
import resource
import sys
import tempfile
import time

ROUNDS = 400


def group_cost(directory, size, files):
    paths = [os.path.join(directory, f"sync{i}.bin") for i in range(files)]
    fds = [os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_APPEND, 0o600) for path in paths]
    payload = os.urandom(size)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(ROUNDS):
        for fd in fds:
            os.write(fd, payload)
            os.fdatasync(fd)
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    for fd, path in zip(fds, paths):
        os.close(fd)
        os.remove(path)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed / ROUNDS * 1e3, cpu / ROUNDS * 1e6


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else "data"
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as directory:
        print("| bytes appended per file | files synced per group | wall ms per group | CPU µs per group |")
        print("|---:|---:|---:|---:|")
        for size, files in [(500, 1), (4_000, 1), (40_000, 1), (120_000, 1), (13_000, 3), (40_000, 3)]:
            wall, cpu = group_cost(directory, size, files)
            print(f"| {size:,} | {files} | {wall:.3f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
