#!/usr/bin/env python3
"""A fixed piece of CPU work (SHA-256 of 1 KiB, best of 5 rounds of 20,000): on a VM whose
effective speed drifts, compare this between runs before comparing their numbers."""
import hashlib
import time

data = b"x" * 1024
best = 1e9
for _ in range(5):
    start = time.perf_counter()
    for _ in range(20000):
        hashlib.sha256(data).digest()
    best = min(best, (time.perf_counter() - start) / 20000 * 1e6)
print("%.2f us per SHA-256 of 1 KiB (python, best of 5)" % best)
