"""ward.toml checking, and the Mosquitto examples in docs/ staying what ward/broker.py writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.room.config import ConfigError
from controller.uplink.wire import Topics
from ward.broker import BridgeUser, RoomUser, WardUser, acl_text
from ward.config import load_ward

DOCS = Path(__file__).resolve().parents[1] / "docs"

GOOD = """[ward]
name = "Ward 4B"
site = "general"
unit = "4b"
rooms = ["4b-12", "4b-14"]
[broker]
host = "127.0.0.1"
username = "ward-4b"
password_file = "pw"
[backfill]
token_file = "tokens.json"
"""


def write(tmp: Path, text: str) -> Path:
    (tmp / "pw").write_text("secret\n")
    (tmp / "tokens.json").write_text('{"4b-12": "srt_x"}')
    path = tmp / "ward.toml"
    path.write_text(text)
    return path


def test_a_good_ward_file(tmp_path):
    config = load_ward(write(tmp_path, GOOD))
    assert (config.site, config.unit, config.rooms) == ("general", "4b", ("4b-12", "4b-14"))
    assert (config.broker.port, config.broker.password, config.broker.keepalive_s) == (1883, "secret", 6)
    assert config.room_tokens == {"4b-12": "srt_x"} and config.http_port == 8090
    tls = load_ward(write(tmp_path, GOOD.replace('host = "127.0.0.1"', 'host = "b"\ntls = true')))
    assert tls.broker.port == 8883
    site = load_ward(write(tmp_path, GOOD.replace('unit = "4b"', 'unit = "+"')))
    assert site.unit == "+"


@pytest.mark.parametrize("change, message", [
    (('unit = "4b"', 'unit = "4b/x"'), r"ward.toml:4: ward.unit: '4b/x' must be"),
    (('name = "Ward 4B"', 'nam = "x"'), r"ward.toml:2: ward.nam: unknown key 'nam'"),
    (('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 0'), r"broker.port: 0 is out of range"),
    (('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 65536'), r"broker.port: 65536 is out of range"),
    (('host = "127.0.0.1"', 'host = "127.0.0.1"\nkeepalive_s = 1'), r"broker.keepalive_s: 1 is out of range"),
    (('password_file = "pw"', 'password_file = "missing"'), r"broker.password_file: .*missing"),
    (('rooms = ["4b-12", "4b-14"]', 'rooms = ["4b 12"]'), r"ward.rooms: '4b 12' must be"),
    (('[backfill]', '[backfil]'), r"unknown table 'backfil'"),
])
def test_ward_file_errors_name_the_line_and_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_ward(write(tmp_path, GOOD.replace(*change)))


def test_port_edges_are_allowed(tmp_path):
    for port in (1, 65535):
        assert load_ward(write(tmp_path, GOOD.replace('host = "127.0.0.1"', f'host = "h"\nport = {port}'))
                         ).broker.port == port


def test_the_docs_acl_examples_are_what_the_code_writes():
    rooms = [RoomUser(r, "-", Topics("general", "4b", r)) for r in ("4b-12", "4b-14")]
    assert (DOCS / "examples/mosquitto/ward-4b.acl").read_text() == acl_text(
        rooms + [WardUser("ward-4b", "-", "general", "4b")])
    assert (DOCS / "examples/mosquitto/hospital.acl").read_text() == acl_text(
        [BridgeUser("bridge-4b", "-", "general", "4b"), BridgeUser("bridge-5a", "-", "general", "5a"),
         WardUser("hospital", "-", "general", "+")])
