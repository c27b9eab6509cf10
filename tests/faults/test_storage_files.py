"""The room database holds token hashes, the audit log and the call history: its file and SQLite's
-wal and -shm beside it are readable by their owner only, however permissive the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controller.service import RoomController
from tests.helpers import keys_for, room_config

FILES = ("room.db", "room.db-wal", "room.db-shm")


@pytest.fixture
def open_umask():
    """The umask a careless service unit leaves (files 0644, world-readable)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(directory: Path) -> dict[str, str]:
    return {name: stat.filemode((directory / name).stat().st_mode) for name in FILES}


async def test_a_new_database_and_its_wal_and_shm_are_owner_only(tmp_path, open_umask):
    config = room_config()
    controller = RoomController(config, keys_for(config), tmp_path / "room.db", timers=False)
    await controller.start()
    try:
        await controller.store.create_token("nurse", "n", 0)  # a write: the WAL has content
        assert modes(tmp_path) == {name: "-rw-------" for name in FILES}
    finally:
        await controller.stop()


async def test_a_database_left_world_readable_is_narrowed_on_start(tmp_path, open_umask):
    config = room_config()
    (tmp_path / "room.db").touch(mode=0o644)  # as an earlier version (or a copy) left it
    controller = RoomController(config, keys_for(config), tmp_path / "room.db", timers=False)
    await controller.start()
    try:
        await controller.store.create_token("nurse", "n", 0)
        assert modes(tmp_path) == {name: "-rw-------" for name in FILES}
    finally:
        await controller.stop()


def test_the_token_command_creates_the_database_owner_only(tmp_path):
    exe = Path(sys.executable).with_name("smartroom")
    subprocess.run([str(exe), "token", "create", "--db", str(tmp_path / "room.db"), "--role", "nurse", "--name", "n"],
                   check=True, capture_output=True, preexec_fn=lambda: os.umask(0o022))
    assert stat.filemode((tmp_path / "room.db").stat().st_mode) == "-rw-------"
