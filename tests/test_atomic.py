"""Atomic writes: temporaries of killed processes are swept on the next write, others kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from seq2reads.atomic import _owner, atomic_path, write_text_atomic


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    host = _owner().rsplit("-", 1)[0]
    dead = tmp_path / f".out.json.tmp-{host}-{_dead_pid()}-deadbeef"
    dead.mkdir()
    (dead / "half.bin").write_bytes(b"x")
    old_dead = tmp_path / f".out.json.old-{host}-{_dead_pid()}-deadbeef"
    old_dead.write_text("old")
    live = tmp_path / f".out.json.tmp-{host}-{os.getpid()}-0badf00d"   # a live process (us)
    other_host = tmp_path / f".out.json.tmp-otherhost-{_dead_pid()}-12345678"
    legacy = tmp_path / ".out.json.tmp-1234abcd"                      # older naming: left alone
    for p in (live, other_host, legacy):
        p.write_text("keep")
    write_text_atomic(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").read_text() == "{}"
    assert not dead.exists() and not old_dead.exists()
    assert live.exists() and other_host.exists() and legacy.exists()


def test_failed_write_leaves_previous_version(tmp_path):
    target = tmp_path / "d"
    write_text_atomic(target, "v1")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
