"""Resource guards of a start: segment size against memory, receivers against CPUs, an
interruptible prefault, and removing exactly what a start created (no sockets opened)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbroker.errors import ConfigError, SegmentError
from shardbroker.platform import linux
from shardbroker.segment import shm
from shardbroker.segment.layout import Geometry
from shardbroker.supervisor.created import Created
from shardbroker.supervisor.guards import check_receivers_fit_cpus

GiB = 1 << 30
MiB = 1 << 20
BIG = Geometry(shard_count=4, pbr_slots=16384, blog_bytes=8 * GiB)  # 32 GiB and a bit


@pytest.fixture
def segment_name() -> Iterator[str]:
    name = f"shardbroker-guard-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        yield name
    finally:
        shm.unlink(name)


def test_segment_larger_than_free_shm_space_is_refused_naming_flags_and_sizes() -> None:
    room = shm.MemoryRoom("/dev/shm", fs_free=24 * GiB, mem_available=64 * GiB)
    with pytest.raises(SegmentError) as err:
        shm.check_room("seg", BIG, room)
    text = str(err.value)
    assert "\n" not in text
    assert "needs 32.0 GiB (4 shards x 8.0 GiB BLog + 2.0 MiB PBR)" in text
    assert "/dev/shm has 24.0 GiB free" in text and "MemAvailable is 64.0 GiB" in text
    assert "--threads" in text and "--blog-size" in text and "--shm-size" in text


def test_segment_larger_than_mem_available_is_refused() -> None:
    room = shm.MemoryRoom("/dev/shm", fs_free=64 * GiB, mem_available=20 * GiB)
    with pytest.raises(SegmentError, match="MemAvailable is 20.0 GiB"):
        shm.check_room("seg", BIG, room)


def test_headroom_must_stay_free_in_memory_not_in_the_tmpfs() -> None:
    short_mem = shm.MemoryRoom("/dev/shm", fs_free=None, mem_available=BIG.total_bytes)
    with pytest.raises(SegmentError, match="256.0 MiB must stay free"):
        shm.check_room("seg", BIG, short_mem)
    # a /dev/shm sized exactly to the segment (a container's --shm-size) is enough
    shm.check_room("seg", BIG, shm.MemoryRoom(
        "/dev/shm", BIG.total_bytes, BIG.total_bytes + shm.HEADROOM_BYTES))
    with pytest.raises(SegmentError, match="has 32.0 GiB free"):
        shm.check_room("seg", BIG, shm.MemoryRoom(
            "/dev/shm", BIG.total_bytes - 1, BIG.total_bytes + shm.HEADROOM_BYTES))


def test_unknown_room_is_not_held_against_a_segment() -> None:
    shm.check_room("seg", BIG, shm.MemoryRoom("/dev/shm", fs_free=None, mem_available=None))


def test_create_refuses_before_anything_exists(segment_name: str) -> None:
    tiny = shm.MemoryRoom("/dev/shm", fs_free=1 * MiB, mem_available=64 * GiB)
    with pytest.raises(SegmentError, match="needs"):
        shm.create(segment_name, Geometry(1, 16, 4 * MiB), room=tiny)
    assert not os.path.exists(f"/dev/shm/{segment_name}")


def test_create_refuses_a_segment_larger_than_dev_shm_free_space(segment_name: str) -> None:
    free = linux.fs_free_bytes("/dev/shm")
    assert free is not None
    blog = (free // GiB + 1) * GiB  # one shard already larger than all free space
    with pytest.raises(SegmentError, match="/dev/shm has"):
        shm.create(segment_name, Geometry(1, 16, blog))  # the real statvfs / meminfo
    assert not os.path.exists(f"/dev/shm/{segment_name}")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                     (512 * MiB, "512.0 MiB"), (24 * GiB, "24.0 GiB"),
                                     (3 << 40, "3.0 TiB")])
def test_binary_size(n: int, text: str) -> None:
    assert shm.binary_size(n) == text


def test_prefault_stops_when_the_check_between_chunks_raises(segment_name: str) -> None:
    m = shm.create(segment_name, Geometry(1, 16, 4 * MiB))
    calls = 0

    def stop_on_second_chunk() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            shm.prefault(m, between_chunks=stop_on_second_chunk, chunk=1 * MiB)
        assert calls == 2  # the chunks after the second were never touched
    finally:
        m.close()


def test_prefault_checks_after_every_chunk(segment_name: str) -> None:
    m = shm.create(segment_name, Geometry(1, 16, 4 * MiB))
    seen: list[int] = []
    try:
        shm.prefault(m, between_chunks=lambda: seen.append(1), chunk=1 * MiB)
    finally:
        m.close()
    assert len(seen) == -(-m.geometry.total_bytes // MiB)


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24683584 kB\nMemFree:  1 kB\nMemAvailable:   1048576 kB\n")
    assert linux.mem_available_bytes(str(f)) == 1 << 30
    f.write_text("MemTotal:       24683584 kB\n")
    assert linux.mem_available_bytes(str(f)) is None
    assert linux.mem_available_bytes(str(tmp_path / "missing")) is None
    assert linux.fs_free_bytes(str(tmp_path / "missing")) is None


def test_process_start_ticks_reads_field_22_past_odd_names(tmp_path: Path) -> None:
    fields = ["S"] + [str(i) for i in range(4, 60)]  # field 3 onward; field 22 is "22"
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_text("7 (a) b (c) " + " ".join(fields) + "\n")
    assert linux.process_start_ticks(7, proc_root=str(tmp_path)) == 22
    assert linux.process_start_ticks(8, proc_root=str(tmp_path)) is None
    assert linux.process_start_ticks(os.getpid()) is not None


def test_more_receivers_than_cpus_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        check_receivers_fit_cpus("--threads 999", 999, [0, 1], oversubscribe=False)
    text = str(err.value)
    assert "\n" not in text
    assert "--threads 999 asks for 999 receivers but only 2 CPUs (0-1)" in text
    assert "--oversubscribe" in text and "lower --threads to 2" in text


def test_oversubscribe_allows_sharing_cpus() -> None:
    check_receivers_fit_cpus("--threads 3", 3, [0, 1], oversubscribe=True)
    check_receivers_fit_cpus("--threads 2", 2, [0, 1], oversubscribe=False)


def test_created_removes_only_what_it_recorded(tmp_path: Path) -> None:
    mine_dir = tmp_path / "mine"
    shared_dir = tmp_path / "shared"
    mine_dir.mkdir()
    shared_dir.mkdir()
    mine, theirs = mine_dir / "control.sock", shared_dir / "control.sock"
    mine.write_text("")
    theirs.write_text("")
    (shared_dir / "mine.json").write_text("")
    created = Created(files=[mine, shared_dir / "mine.json", tmp_path / "never-made"],
                      dirs=[mine_dir, shared_dir])
    created.remove_files()
    assert not mine.exists() and not mine_dir.exists()
    assert theirs.exists() and shared_dir.exists()  # not empty: someone else's file stays
    assert not (shared_dir / "mine.json").exists()
