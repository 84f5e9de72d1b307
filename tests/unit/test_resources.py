"""Readiness on machine resources (engramdb.service.resources): each check fires at its threshold only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engramdb.service import resources
from engramdb.service.resources import Readings, ResourceChecks, cgroup_memory_limit, problems

MIB = 1024 * 1024
FINE = Readings(
    disk_free=10_000 * MIB,
    open_fds=100,
    max_fds=1024,
    rss=100 * MIB,
    vsize=1000 * MIB,
    cgroup_memory_limit=None,
    address_space_limit=None,
)


def test_nothing_reported_with_room_everywhere() -> None:
    assert problems(FINE, min_free_disk_mb=100) == []


def test_disk_below_the_minimum() -> None:
    low = replace(FINE, disk_free=50 * MIB)
    [p] = problems(low, min_free_disk_mb=100)
    assert "50 MiB free" in p and "server.min_free_disk_mb" in p
    assert problems(low, min_free_disk_mb=0) == []  # 0 turns the check off
    assert problems(replace(FINE, disk_free=100 * MIB), min_free_disk_mb=100) == []


def test_file_descriptors_near_the_limit() -> None:
    assert problems(replace(FINE, open_fds=922), 0) != []  # over 90 % of 1024 (921.6)
    assert problems(replace(FINE, open_fds=922, max_fds=None), 0) == []  # no limit known
    [p] = problems(replace(FINE, open_fds=1000), 0)
    assert "1000 of 1024 file descriptors" in p and "ulimit -n" in p
    assert problems(replace(FINE, open_fds=900), 0) == []


def test_memory_near_the_cgroup_limit() -> None:
    [p] = problems(replace(FINE, rss=970 * MIB, cgroup_memory_limit=1000 * MIB), 0)
    assert "cgroup memory limit" in p
    assert problems(replace(FINE, rss=900 * MIB, cgroup_memory_limit=1000 * MIB), 0) == []


def test_address_space_near_its_limit() -> None:
    [p] = problems(replace(FINE, vsize=980 * MIB, address_space_limit=1000 * MIB), 0)
    assert "address-space limit" in p
    assert problems(replace(FINE, vsize=900 * MIB, address_space_limit=1000 * MIB), 0) == []


def test_cgroup_limits_v1_and_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "kubepods" / "pod1" / "memory.max").write_text("536870912\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    assert cgroup_memory_limit(str(proc), str(root)) == 512 * MIB
    (root / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(str(proc), str(root)) is None
    v1 = root / "memory" / "grp"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    proc.write_text("4:memory:/grp\n1:cpu:/\n")
    assert cgroup_memory_limit(str(proc), str(root)) is None
    (v1 / "memory.limit_in_bytes").write_text("1073741824\n")
    assert cgroup_memory_limit(str(proc), str(root)) == 1024 * MIB


def test_readings_are_cached_for_a_second(monkeypatch: object) -> None:
    calls = []

    def reader(path: object) -> Readings:
        calls.append(path)
        return FINE

    checks = ResourceChecks("/data", 100, reader=reader)
    checks.problems()
    checks.problems()
    assert len(calls) == 1
    checks._at -= resources.CACHE_SECONDS
    checks.problems()
    assert len(calls) == 2


def test_real_readings_on_this_machine(tmp_path: Path) -> None:
    r = resources.read(tmp_path)
    assert r.disk_free is not None and r.disk_free > 0
    assert r.open_fds is not None and r.open_fds > 0
    assert r.rss is not None and r.rss > 0
