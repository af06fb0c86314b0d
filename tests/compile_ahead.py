"""Run compile jobs in a thread pool before the tests that need them.

XLA's compiler releases the GIL, so several `lower(...).compile()` calls (or first calls
of jitted functions) overlap with each other and with the next one's tracing; the tests'
own calls then hit the compiled executables. Checks never run in these threads."""
import os
from concurrent.futures import ThreadPoolExecutor


def run_concurrently(jobs, max_workers=None):
    """Call every zero-argument job, up to max_workers (default: the CPU count) at a
    time, and re-raise the first error."""
    jobs = list(jobs)
    workers = min(len(jobs), max_workers or os.cpu_count() or 1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for f in [pool.submit(job) for job in jobs]:
            f.result()
