"""The machine resources readiness depends on: disk space, file descriptors, memory headroom.

A node about to run out of any of these still answers, but not for long:
RocksDB refuses writes on a full disk, a process at its descriptor limit
cannot open an SST file or accept a connection, and one at its memory limit
is killed. :class:`ResourceChecks` turns each into a line of ``/ready``'s
``problems`` before that happens, so that a load balancer or Kubernetes
moves traffic away while the operator acts. Readings come from ``/proc``,
the cgroup files and ``getrlimit``; each is cheap, and the result is kept
for :data:`CACHE_SECONDS` because probes and scrapes call it often.
"""

from __future__ import annotations

import os
import resource
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE_SECONDS = 1.0
# Open descriptors above this share of RLIMIT_NOFILE make the node not ready.
FD_USAGE_LIMIT = 0.90
# Memory above this share of the limit (cgroup memory.max, RLIMIT_AS) makes the node not ready.
MEMORY_USAGE_LIMIT = 0.95
# cgroup files say "max" or a number near 2**63 for "no limit".
_NO_LIMIT = 1 << 62
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Readings:
    """One look at the resources; None where the platform does not tell."""

    disk_free: int | None
    open_fds: int | None
    max_fds: int | None
    rss: int | None
    vsize: int | None
    cgroup_memory_limit: int | None
    address_space_limit: int | None


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _rlimit(which: int) -> int | None:
    soft, _ = resource.getrlimit(which)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def memory_usage() -> tuple[int | None, int | None]:
    """``(rss, virtual size)`` of this process in bytes (Linux ``/proc/self/statm``)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None, None
    page = os.sysconf("SC_PAGE_SIZE")
    return int(fields[1]) * page, int(fields[0]) * page


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), if any."""
    candidates: list[Path] = []
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2
            candidates += [Path(root, rel, "memory.max"), Path(root, "memory.max")]
        elif "memory" in controllers.split(","):  # cgroup v1
            candidates += [
                Path(root, "memory", rel, "memory.limit_in_bytes"),
                Path(root, "memory", "memory.limit_in_bytes"),
            ]
    limits = []
    for f in candidates:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < _NO_LIMIT:
            limits.append(int(text))
    return min(limits) if limits else None


def read(data_dir: str | os.PathLike[str]) -> Readings:
    try:
        free: int | None = shutil.disk_usage(data_dir).free
    except OSError:
        free = None
    rss, vsize = memory_usage()
    return Readings(
        disk_free=free,
        open_fds=open_fds(),
        max_fds=_rlimit(resource.RLIMIT_NOFILE),
        rss=rss,
        vsize=vsize,
        cgroup_memory_limit=cgroup_memory_limit(),
        address_space_limit=_rlimit(resource.RLIMIT_AS),
    )


def problems(r: Readings, min_free_disk_mb: int) -> list[str]:
    """One line per resource that is running out, saying what to do."""
    out = []
    if min_free_disk_mb and r.disk_free is not None and r.disk_free < min_free_disk_mb * _MIB:
        out.append(
            f"the data directory's file system has {r.disk_free // _MIB} MiB free, below server.min_free_disk_mb "
            f"({min_free_disk_mb} MiB): free disk space or grow the volume"
        )
    if r.open_fds is not None and r.max_fds and r.open_fds > FD_USAGE_LIMIT * r.max_fds:
        out.append(
            f"{r.open_fds} of {r.max_fds} file descriptors are open (over {FD_USAGE_LIMIT:.0%}): raise the limit "
            "(ulimit -n, LimitNOFILE=) or lower server.max_connections"
        )
    if r.rss is not None and r.cgroup_memory_limit and r.rss > MEMORY_USAGE_LIMIT * r.cgroup_memory_limit:
        out.append(
            f"resident memory {r.rss // _MIB} MiB is over {MEMORY_USAGE_LIMIT:.0%} of the cgroup memory limit "
            f"({r.cgroup_memory_limit // _MIB} MiB): raise the limit or lower storage.block_cache_mb"
        )
    # RLIMIT_AS caps the address space, not residency: compare what it caps.
    if r.vsize is not None and r.address_space_limit and r.vsize > MEMORY_USAGE_LIMIT * r.address_space_limit:
        out.append(
            f"virtual memory {r.vsize // _MIB} MiB is over {MEMORY_USAGE_LIMIT:.0%} of the address-space limit "
            f"({r.address_space_limit // _MIB} MiB, ulimit -v): raise or remove that limit"
        )
    return out


class ResourceChecks:
    """:func:`problems` of the data directory's machine, read at most once per :data:`CACHE_SECONDS`."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        min_free_disk_mb: int,
        reader: Callable[[str | os.PathLike[str]], Readings] = read,
    ):
        self.data_dir = data_dir
        self.min_free_disk_mb = min_free_disk_mb
        self._reader = reader
        self._lock = threading.Lock()
        self._at = -CACHE_SECONDS
        self._readings: Readings | None = None

    def readings(self) -> Readings:
        with self._lock:
            now = time.monotonic()
            if self._readings is None or now - self._at >= CACHE_SECONDS:
                self._readings, self._at = self._reader(self.data_dir), now
            return self._readings

    def problems(self) -> list[str]:
        return problems(self.readings(), self.min_free_disk_mb)
