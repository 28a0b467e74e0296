"""Peak resident memory of one measured region of this process (Linux), for the benchmark children.

`ru_maxrss` never goes down, so a transient peak while the inputs were being built (random tensors, model init) would
hide the region's own peak. `reset_peak()` clears the kernel's high-water mark (`VmHWM`) instead, so
`peak_mb() - base` is the region's peak above the memory held when it started.
"""

from __future__ import annotations


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def rss_mb() -> float:
    """Resident memory now, MiB."""
    return _status_mb("VmRSS")


def reset_peak() -> float:
    """Clear the high-water mark and return the resident memory it restarts from, MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def peak_mb() -> float:
    """Highest resident memory since the last `reset_peak()`, MiB."""
    return _status_mb("VmHWM")
