"""Room configuration: the strict schema, profile defaults, and errors that name file, line and key."""

from __future__ import annotations

import copy
import textwrap
import tomllib
from pathlib import Path

import pytest

from controller.room.config import (INPUT_MEANINGS, PROFILES, ConfigError, EnvRule, NodeConfig, RoomConfig, Supervision,
                               TierTimers, key_line, load_room, parse_room)
from tests.helpers import ROOM_DOC, room_config

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load_text(tmp_path: Path, text: str) -> RoomConfig:
    path = tmp_path / "4b.toml"
    path.write_text(toml(text))
    return load_room(path)


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return str(info.value)


# --------------------------------------------------------------------------- the example files


@pytest.mark.parametrize("name, room_id, profile, measures", [
    ("patient-room.toml", "4b-12", "patient_room", {"temp_c", "rh_pct", "co2_ppm"}),
    ("isolation-room.toml", "4b-iso-1", "airborne_isolation",
     {"temp_c", "rh_pct", "co2_ppm", "noise_db", "pressure_pa"}),
])
def test_example_files_load(name, room_id, profile, measures):
    config = load_room(EXAMPLES / name)
    assert (config.room_id, config.profile) == (room_id, profile)
    assert set(config.environment) == measures
    assert config.source == str(EXAMPLES / name)
    assert all(meaning in INPUT_MEANINGS for node in config.nodes.values() for meaning in node.inputs.values())


def test_patient_room_example_values():
    config = load_room(EXAMPLES / "patient-room.toml")
    assert config.beds == ("A", "B")
    assert config.fall_risk_beds == frozenset({"A"})
    assert config.meaning("bath", "cord") == "bath_emergency"
    assert config.nodes["door"].tone and not config.nodes["bedside-b"].tone
    assert config.environment["temp_c"] == EnvRule("temp_c", 22.0, 24.0, 0.5, 600, 60)


# --------------------------------------------------------------------------- broken files

BROKEN = [
    ("bad meaning in an inline table", """
        [room]
        id = "4b-12"

        [nodes.bath]
        location = "bathroom"
        inputs = { cord = "bath_emergancy", pir = "bath_presence" }
        """, 6, "nodes.bath.inputs.cord",
     "'bath_emergancy' is not one of patient_call, bath_emergency, staff_assist, staff_emergency, code_call, "
     "request_water, request_pain, request_toilet, cancel, staff_presence, im_ok, room_presence, bath_presence, "
     "bed_occupancy, patient_emergency, patient_cancel (did you mean 'bath_emergency'?)"),
    ("bad meaning in an inputs table", """
        [room]
        id = "4b-12"

        [nodes.bath]
        location = "bathroom"

        [nodes.bath.inputs]
        pir = "bath_presence"
        cord = "pull_cord"
        """, 9, "nodes.bath.inputs.cord", "'pull_cord' is not one of patient_call"),
    ("unknown key with a suggestion", """
        [room]
        id = "4b-12"

        [gateway]
        port = 7700
        heartbeat = 5000

        [nodes.bath]
        """, 6, "gateway.heartbeat", "unknown key 'heartbeat' (did you mean 'heartbeat_ms'?)"),
    ("unknown key without a suggestion", """
        [room]
        id = "4b-12"
        colour = "blue"

        [nodes.bath]
        """, 3, "room.colour", "unknown key 'colour' (allowed: id, name, profile)"),
    ("unknown top-level table", """
        [room]
        id = "4b-12"

        [gatway]
        port = 7700

        [nodes.bath]
        """, 4, "gatway", "unknown key 'gatway' (did you mean 'gateway'?)"),
    ("bed reference to an undeclared bed", """
        [room]
        id = "4b-12"

        [[beds]]
        id = "A"

        [nodes.bedside-b]
        location = "bedside"
        bed = "B"
        """, 9, "nodes.bedside-b.bed", "bed 'B' is not declared under [[beds]] (declared: A)"),
    ("duplicate bed ids", """
        [room]
        id = "4b-12"

        [[beds]]
        id = "A"

        [[beds]]
        fall_risk = true
        id = "A"

        [nodes.bath]
        """, 9, "beds[1].id", "duplicate bed id 'A' (also beds[0])"),
    ("bed without id", """
        [room]
        id = "4b-12"

        [[beds]]
        id = "A"

        [[beds]]
        fall_risk = true

        [nodes.bath]
        """, 7, "beds[1].id", "missing key 'id'"),
    ("escalation with two levels", """
        [room]
        id = "4b-12"

        [escalation]
        levels = ["primary nurse",
                  "charge nurse"]

        [nodes.bath]
        """, 5, "escalation.levels", "needs at least 3 levels"),
    ("duplicate escalation level", """
        [room]
        id = "4b-12"

        [escalation]
        levels = ["primary nurse", "charge nurse", "primary nurse"]

        [nodes.bath]
        """, 5, "escalation.levels[2]", "duplicate level 'primary nurse'"),
    ("battery_replaced_v not above low_battery_v", """
        [room]
        id = "4b-12"

        [supervision]
        low_battery_v = 3.6
        battery_replaced_v = 3.6

        [nodes.bath]
        """, 6, "supervision.battery_replaced_v",
     "battery_replaced_v (3.6) must be greater than low_battery_v (3.6)"),
    ("low_battery_v above the default battery_replaced_v", """
        [room]
        id = "4b-12"

        [supervision]
        low_battery_v = 4.0

        [nodes.bath]
        """, 5, "supervision.low_battery_v", "must be greater than low_battery_v (4.0)"),
    ("environment override of an unknown measure", """
        [room]
        id = "4b-12"

        [environment.temp]
        high = 25.0

        [nodes.bath]
        """, 4, "environment.temp", "unknown key 'temp' (did you mean 'temp_c'?)"),
    ("environment low not below high", """
        [room]
        id = "4b-12"

        [environment.temp_c]
        low = 25.0

        [nodes.bath]
        """, 5, "environment.temp_c.low", "low (25.0) must be less than high (24.0)"),
    ("environment hysteresis wider than the band", """
        [room]
        id = "4b-12"

        [environment.temp_c]
        hysteresis = 1.5

        [nodes.bath]
        """, 5, "environment.temp_c.hysteresis", "must be less than half of high - low"),
    ("environment rule without limits", """
        [room]
        id = "4b-12"

        [environment.pressure_pa]
        min_duration_s = 60

        [nodes.bath]
        """, 4, "environment.pressure_pa", "needs 'low' or 'high'"),
    ("bool given for an int", """
        [room]
        id = "4b-12"

        [gateway]
        heartbeat_ms = true

        [nodes.bath]
        """, 5, "gateway.heartbeat_ms", "expected an integer, got a boolean (true)"),
    ("float given for an int", """
        [room]
        id = "4b-12"

        [supervision]
        missed_heartbeats = 3.0

        [nodes.bath]
        """, 5, "supervision.missed_heartbeats", "expected an integer, got a number (3.0)"),
    ("string given for a float", """
        [room]
        id = "4b-12"

        [timers]
        silence_s = "2 minutes"

        [nodes.bath]
        """, 5, "timers.silence_s", "expected a number, got a string ('2 minutes')"),
    ("presence reminder not before the end", """
        [room]
        id = "4b-12"

        [timers]
        presence_s = 60
        presence_reminder_s = 60

        [nodes.bath]
        """, 6, "timers.presence_reminder_s",
     "60 must be less than presence_s (60): the reminder comes before presence ends"),
    ("presence shorter than a minute", """
        [room]
        id = "4b-12"

        [timers]
        presence_s = 59.9

        [nodes.bath]
        """, 5, "timers.presence_s", "59.9 is out of range: allowed 60 to 14400"),
    ("not-displayed time over its range", """
        [room]
        id = "4b-12"

        [timers]
        not_displayed_s = 601

        [nodes.bath]
        """, 5, "timers.not_displayed_s", "601 is out of range: allowed 5 to 600"),
    ("heartbeat out of range", """
        [room]
        id = "4b-12"

        [gateway]
        heartbeat_ms = 500

        [nodes.bath]
        """, 5, "gateway.heartbeat_ms", "500 is out of range: allowed 1000 to 600000"),
    ("port out of range, as a top-level dotted key", """
        gateway.port = 70000

        [room]
        id = "4b-12"

        [nodes.bath]
        """, 1, "gateway.port", "70000 is out of range: allowed 0 to 65535"),
    ("tier timer out of range", """
        [room]
        id = "4b-12"

        [timers.high]
        escalate_s = 2

        [nodes.bath]
        """, 5, "timers.high.escalate_s", "2 is out of range: allowed 5 to 3600"),
    ("unknown tier", """
        [room]
        id = "4b-12"

        [timers.hihg]
        escalate_s = 20

        [nodes.bath]
        """, 4, "timers.hihg", "unknown key 'hihg' (did you mean 'high'?)"),
    ("missing room.id", """
        # room 12
        [room]
        name = "Ward 4B room 12"

        [nodes.bath]
        """, 2, "room.id", "missing key 'id'"),
    ("unknown profile", """
        [room]
        id = "4b-12"
        profile = "isolation"

        [nodes.bath]
        """, 3, "room.profile", "'isolation' is not one of patient_room, airborne_isolation"),
    ("bad node id in a quoted key", """
        [room]
        id = "4b-12"

        [nodes."Bath Room"]
        location = "bathroom"
        """, 4, "nodes.Bath Room", "node id 'Bath Room' must match ^[a-z0-9-]{1,32}$"),
    ("bed_occupancy without a bed", """
        [room]
        id = "4b-12"

        [nodes.bedside]
        inputs = { pad = "bed_occupancy" }
        """, 5, "nodes.bedside.inputs.pad", "a bed_occupancy input needs the node's 'bed' to be set"),
    ("unknown node key", """
        [room]
        id = "4b-12"

        [nodes.bath]
        location = "bathroom"
        indicater = true
        """, 6, "nodes.bath.indicater", "unknown key 'indicater' (did you mean 'indicator'?)"),
]


@pytest.mark.parametrize("text, line, key, message", [case[1:] for case in BROKEN], ids=[c[0] for c in BROKEN])
def test_error_names_file_line_and_key(tmp_path, text, line, key, message):
    error = load_error(tmp_path, text)
    assert error.startswith(f"{tmp_path / '4b.toml'}:{line}: {key}: "), error
    assert message in error


def test_missing_room_table_has_no_line(tmp_path):
    error = load_error(tmp_path, "[nodes.bath]\n")
    assert error == f"{tmp_path / '4b.toml'}: room: missing key 'room' (the file needs a [room] table)"


def test_toml_syntax_error(tmp_path):
    error = load_error(tmp_path, """
        [room]
        id = "4b-12"
        name = "Ward 4B
        """)
    assert error.startswith(f"{tmp_path / '4b.toml'}: ")
    assert "line 3" in error


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_room(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- dict input (no line numbers)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["nodes"]["bath"]["inputs"].update(cord="explode"),
     "test-room.toml: nodes.bath.inputs.cord: 'explode' is not one of patient_call"),
    (lambda d: d["gateway"].update(heartbeat_ms=5),
     "test-room.toml: gateway.heartbeat_ms: 5 is out of range: allowed 1000 to 600000"),
    (lambda d: d["beds"].append({"id": "A"}), "test-room.toml: beds[1].id: duplicate bed id 'A'"),
    (lambda d: d.update(timers={"high": {"escalate_s": True}}),
     "test-room.toml: timers.high.escalate_s: expected a number, got a boolean (true)"),
    (lambda d: d.pop("nodes"), "test-room.toml: nodes: missing key 'nodes'"),
])
def test_dict_errors_have_no_line(mutate, expected):
    doc = copy.deepcopy(ROOM_DOC)
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_room(doc, "test-room.toml")
    assert str(info.value).startswith(expected), str(info.value)


# --------------------------------------------------------------------------- defaults and overrides


def test_defaults_when_sections_are_absent():
    config = room_config()
    assert (config.room_id, config.name, config.beds) == ("4b-12", "Ward 4B room 12", ("A",))
    assert (config.node_host, config.node_port, config.heartbeat_ms) == ("127.0.0.1", 7700, 10000)
    assert config.profile == "patient_room"
    assert config.fall_risk_beds == frozenset()
    assert config.escalation_levels == ("primary nurse", "charge nurse", "all staff")
    assert config.supervision == Supervision(3, 3.45, 3.9)
    assert dict(config.timers.tiers) == {"high": TierTimers(30, 180), "medium": TierTimers(60, 180),
                                         "low": TierTimers(120, 180), "info": TierTimers(600, 1800)}
    assert (config.timers.bath_dwell_s, config.timers.fall_ok_window_s, config.timers.silence_s) == (1200, 30, 120)
    assert (config.timers.presence_s, config.timers.presence_reminder_s, config.timers.not_displayed_s) == \
        (1800, 60, 15)
    assert dict(config.environment) == dict(PROFILES["patient_room"])
    assert config.meaning("bedside-a", "call") == "patient_call"
    assert config.meaning("bedside-a", "nope") is None and config.meaning("nope", "call") is None
    assert config.nodes["bedside-a"] == NodeConfig("bedside-a", "bedside", "A",
                                                   {"call": "patient_call", "cancel": "cancel", "pir": "room_presence"},
                                                   indicator=True, tone=True)


def test_room_config_direct_construction_defaults():
    config = RoomConfig("r", "R", ("A",), {})
    assert config.source == "<memory>" and config.profile == "patient_room"
    assert config.timers.tiers["info"] == TierTimers(600, 1800)
    assert set(config.environment) == {"temp_c", "rh_pct", "co2_ppm", "noise_db"}


def test_profile_rules():
    patient, isolation = PROFILES["patient_room"], PROFILES["airborne_isolation"]
    assert patient["temp_c"] == EnvRule("temp_c", 21, 24, 0.5, 600, 60)
    assert patient["rh_pct"] == EnvRule("rh_pct", None, 60, 3, 600, 60)
    assert patient["co2_ppm"] == EnvRule("co2_ppm", None, 1100, 100, 1800, 60)
    assert patient["noise_db"] == EnvRule("noise_db", None, 45, 3, 600, 60)
    assert "pressure_pa" not in patient
    assert isolation["pressure_pa"] == EnvRule("pressure_pa", None, -2.5, 0.5, 60, 30)
    assert {m: r for m, r in isolation.items() if m != "pressure_pa"} == dict(patient)


@pytest.mark.parametrize("environment, expected", [
    ({"temp_c": {"high": 25}}, {"temp_c": EnvRule("temp_c", 21.0, 25.0, 0.5, 600, 60)}),
    ({"co2_ppm": {"min_duration_s": 900, "clear_s": 120}},
     {"co2_ppm": EnvRule("co2_ppm", None, 1100, 100, 900, 120)}),
    ({"noise_db": {"enabled": False}}, {"noise_db": None}),
    ({"noise_db": {"enabled": True}}, {"noise_db": PROFILES["patient_room"]["noise_db"]}),
    ({"pressure_pa": {"low": 2.5}}, {"pressure_pa": EnvRule("pressure_pa", 2.5, None, 0, 0, 0)}),
])
def test_environment_override_key_by_key(environment, expected):
    doc = copy.deepcopy(ROOM_DOC)
    doc["environment"] = environment
    config = parse_room(doc, "test-room.toml")
    for measure, rule in expected.items():
        assert config.environment.get(measure) == rule
    untouched = set(PROFILES["patient_room"]) - set(expected)
    assert all(config.environment[m] == PROFILES["patient_room"][m] for m in untouched)


def test_isolation_profile_has_pressure(tmp_path):
    config = load_text(tmp_path, """
        [room]
        id = "iso"
        profile = "airborne_isolation"

        [environment.pressure_pa]
        min_duration_s = 30

        [nodes.pressure]
        """)
    assert config.environment["pressure_pa"] == EnvRule("pressure_pa", None, -2.5, 0.5, 30, 30)
    assert config.environment["temp_c"] == PROFILES["patient_room"]["temp_c"]


def test_int_accepted_for_float(tmp_path):
    config = load_text(tmp_path, """
        [room]
        id = "4b-12"
        [supervision]
        low_battery_v = 3
        [timers.low]
        reminder_s = 600
        [nodes.bath]
        """)
    assert config.supervision.low_battery_v == 3.0 and isinstance(config.supervision.low_battery_v, float)
    assert config.timers.tiers["low"] == TierTimers(120, 600)
    assert config.timers.tiers["high"] == TierTimers(30, 180)


# --------------------------------------------------------------------------- the key locator

LOCATOR_TEXT = toml('''
    # header comment
    top = 1
    gateway.port = 7700            # dotted key at the top level

    [room]
    id = "4b-12"
    note = """
    fake = 1
    [not.a.table]
    """
    after = 'x' # comment [x]

    [[beds]]
    id = "A"

    [[beds]]
    id = "B"
    [beds.extra]
    v = [
      1, # a comment with = and [
      2,
    ]
    "quoted key" = 3

    [nodes."bed-a"]
    inputs = { cord = "bath_emergency" }
    a . "b.c" = 1

    [nodes.bath.inputs]
    cord = "x"
    ''')


@pytest.mark.parametrize("path, line", [
    (("top",), 2),
    (("gateway",), 3),
    (("gateway", "port"), 3),
    (("room",), 5),
    (("room", "id"), 6),
    (("room", "note"), 7),
    (("room", "fake"), 5),                     # inside a multi-line string: not a key
    (("not",), None),
    (("room", "after"), 11),
    (("beds",), 13),
    (("beds", 0), 13),
    (("beds", 0, "id"), 14),
    (("beds", 1), 16),
    (("beds", 1, "id"), 17),
    (("beds", 1, "extra"), 18),
    (("beds", 1, "extra", "v"), 19),
    (("beds", 1, "extra", "quoted key"), 23),
    (("beds", 2, "id"), 13),                   # no third [[beds]]: the array's first line
    (("nodes",), 25),
    (("nodes", "bed-a"), 25),
    (("nodes", "bed-a", "inputs"), 26),
    (("nodes", "bed-a", "inputs", "cord"), 26),  # inside an inline table: the table's line
    (("nodes", "bed-a", "a", "b.c"), 27),
    (("nodes", "bath"), 29),
    (("nodes", "bath", "inputs", "cord"), 30),
    (("nodes", "bath", "location"), 29),       # missing key: its table's line
    (("missing",), None),
    ((), None),
])
def test_key_line(path, line):
    assert key_line(LOCATOR_TEXT, path) == line


def test_key_line_nested_array_tables():
    text = toml("""
        [[a]]
        [[a.b]]
        x = 1
        [[a.b]]
        x = 2
        [[a]]
        [[a.b]]
        x = 3
        """)
    assert [key_line(text, p) for p in [("a", 0, "b", 1, "x"), ("a", 1, "b", 0, "x"), ("a", 1, "b", 1)]] == [5, 8, 7]


def test_key_line_explicit_table_after_its_subtable():
    text = toml("""
        [nodes.bath]
        location = "bathroom"
        [nodes]
        door = {}
        """)
    assert (key_line(text, ("nodes",)), key_line(text, ("nodes", "bath")), key_line(text, ("nodes", "door"))) == (3, 1, 4)


def _paths(value, prefix=()):
    """Every key path in a parsed TOML document (ints index arrays of tables)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for i, item in enumerate(value):
            yield prefix + (i,)
            yield from _paths(item, prefix + (i,))


@pytest.mark.parametrize("name", ["patient-room.toml", "isolation-room.toml"])
def test_key_line_finds_every_key_of_the_examples(name):
    text = (EXAMPLES / name).read_text()
    lines = text.splitlines()
    for path in _paths(tomllib.loads(text)):
        line = key_line(text, path)
        assert line is not None, path
        last = path[-1]
        expected = f"[[{'.'.join(p for p in path if isinstance(p, str))}]]" if isinstance(last, int) else last
        assert expected in lines[line - 1], (path, line, lines[line - 1])
