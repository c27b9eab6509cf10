"""The fall detector v2 (firmware/srnode/fall.py) in MicroPython, on synthetic scenarios.

The scenarios are generated and fed sample by sample inside the MicroPython unix port by
``tests/mp/fall_traces.py`` (one process for all of them, one JSON line each); here each
scenario's outcome is one test. Expected behaviour, and why:

* a clean fall alarms once, 2 s after the impact peak (inside the 3 s target), at 50, 100 and
  200 Hz, and on a +-8 g part that clips the impact; an arm knocking the floor 1.3 s later (less
  than half the impact's height) is part of the same fall and does not delay the alarm;
* a node at 200 Hz decides exactly as one at 50 Hz fed the same samples' block means (fall.py
  averages down to its own 50 Hz);
* lying down onto a bed (sitting on the edge with a bump, then lying back), also with a sit as
  hard as a fall's impulse: no alarm (not turned to lying at the contact, turning after it);
* a slump (fainting: folded down to lying, a soft landing, then still) alarms as fall type 2; the same
  landing followed by seconds of turning and moving does not, nor by settling in place, nor a
  soft contact half lying followed by 25 degrees more onto the back, nor letting oneself fall
  sideways from sitting reclined (all of that is lying down);
* a fall out of bed (lying, a roll and a drop, a hard landing on the floor) alarms as fall type 3;
  turning over in bed with a firm bump does not;
* a fall, 5 s on the floor, then getting up and walking away: the alarm stands. It was raised
  at 2 s, while the patient was still down; a fall the patient walks away from still matters
  clinically, and the patient cancels it with "I'm OK". A second fall later alarms again;
* a stumble that is upright again within a second (down on a knee and straight back up), sitting
  down hard, jumping, jogging, walking and standing for minutes: no alarm (upright afterwards);
* lying down in bed and rolling over with a bump: no alarm (lying before the impact);
* a dropped node (0.45 s of true free fall, a 14 g hit, lying perfectly still): no alarm, counted
  in ``det.dropped``: a body never falls that freely (SisFall's longest free fall in 450 falls is
  240 ms), a node falling from the waist does (~450 ms), and an alarm for every dropped pendant
  would teach staff to ignore the fall alarm;
* another mount (the simulated board's, upright = +z) works after 30 s of walking, or at once
  with ``up`` given; with neither, the posture before the fall reads as lying and
  nothing alarms (a known limitation, docs/firmware.md);
* the per-sample path allocates nothing over 10,000 updates that include falls, and the detector
  with its ring buffer takes well under 16 KB of heap, at 50 and 100 Hz.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.nodepeer import FIRMWARE, MICROPYTHON, ROOT

SCRIPT = ROOT / "tests" / "mp" / "fall_traces.py"
#: Heap for the scenario process: the firmware's board-sized heap (docs/firmware.md, Heap).
HEAP = "64wK"
HEAP_LIMIT_BYTES = 16 * 1024
DECIDE_S = 2.0          # fall.py's _DECIDE_MS
ALARM_LIMIT_S = 3.0     # the target: alarm within 3 s of the impact peak


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    env = {**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"}
    result = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={HEAP}", str(SCRIPT)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = {}
    for line in result.stdout.splitlines():
        d = json.loads(line)
        out[d["name"]] = d
    return out


def alarm_delays_s(o: dict, mark: str = "impact") -> list[float]:
    return [(i - o["marks"][mark]) / o["rate"] for i, _ in o["fires"]]


@pytest.mark.parametrize("name", ["clean_fall", "clean_fall_100hz", "clean_fall_200hz"])
def test_clean_fall_alarms_once_two_seconds_after_the_impact(outcomes, name):
    o = outcomes[name]
    assert len(o["fires"]) == 1, o["fires"]
    (delay,) = alarm_delays_s(o)
    assert DECIDE_S - 0.1 <= delay <= ALARM_LIMIT_S
    f = o["fires"][0][1]
    assert all(type(v) is int for v in f.values()), f
    # nine at most: a tenth makes the event's frame outgrow proto.canonical()'s 128 pieces
    assert set(f) == {"peak_mg", "impulse_mgs", "pre_deg", "post_deg", "turn_in_deg", "turn_after_deg",
                      "motion_mg", "score", "fall_type"}
    assert 3000 <= f["peak_mg"] <= 4100
    assert f["turn_in_deg"] >= 75 and f["turn_after_deg"] <= 5
    # a 60 ms 4 g pulse carries ~100 mg s: below a hard impact, caught as a slump (lying, still)
    assert f["fall_type"] == 2 and 80 <= f["impulse_mgs"] < 140
    assert f["pre_deg"] <= 15 and f["post_deg"] >= 75
    assert f["motion_mg"] < 50


def test_fall_then_getting_up_keeps_its_alarm_and_a_second_fall_alarms_again(outcomes):
    o = outcomes["fall_get_up_walk_away"]
    assert len(o["fires"]) == 2, o["fires"]
    first = (o["fires"][0][0] - o["marks"]["impact"]) / o["rate"]
    second = (o["fires"][1][0] - o["marks"]["impact2"]) / o["rate"]
    assert DECIDE_S - 0.1 <= first <= ALARM_LIMIT_S and DECIDE_S - 0.1 <= second <= ALARM_LIMIT_S


def test_a_smaller_knock_after_the_impact_belongs_to_the_fall(outcomes):
    # an arm hitting the floor 1.3 s after the impact, at less than half its height, does not
    # move the candidate: the alarm comes 2 s after the impact, not 2 s after the knock
    o = outcomes["fall_then_knock"]
    assert len(o["fires"]) == 1, o["fires"]
    assert o["marks"]["knock"] - o["marks"]["impact"] >= 1.2 * o["rate"]
    assert DECIDE_S - 0.1 <= alarm_delays_s(o)[0] <= DECIDE_S + 0.1
    assert o["fires"][0][1]["peak_mg"] >= 3000


def test_a_clipped_hard_fall_alarms_on_its_impact(outcomes):
    # +-8 g part, a 12 g impact: |a| reads 8 g and more, the impulse stays far above a hard impact's
    o = outcomes["clipped_fall"]
    assert len(o["fires"]) == 1, o["fires"]
    assert DECIDE_S - 0.1 <= alarm_delays_s(o)[0] <= ALARM_LIMIT_S
    f = o["fires"][0][1]
    assert f["fall_type"] == 1 and f["impulse_mgs"] >= 200 and 8000 <= f["peak_mg"] <= 8000 * 1.75 and f["score"] >= 0


def test_a_200_hz_node_decides_as_a_50_hz_one_on_the_block_means(outcomes):
    fires = outcomes["rates_agree"]["fires"]
    fast = [(i, f) for rate, i, f in fires if rate == "200"]
    slow = [(i, f) for rate, i, f in fires if rate == "50"]
    assert len(slow) == 3, slow     # the fall, the slump, the fall out of bed; not the lie-down
    assert fast == slow
    assert [f["fall_type"] for _, f in slow] == [2, 2, 3]


@pytest.mark.parametrize("name", ["stumble_recovered", "sit_down_hard", "jumping", "jumping_100hz",
                                  "lie_down_in_bed", "walk_10_min", "jog_2_min", "jog_2_min_100hz",
                                  "still_10_min", "lie_down_on_a_bed", "lie_down_on_a_bed_200hz",
                                  "lie_down_hard_sit", "slump_then_moving", "lie_back_after_contact",
                                  "flop_from_reclined", "lie_down_then_settle", "roll_over_in_bed_hard"])
def test_daily_activities_do_not_alarm(outcomes, name):
    assert outcomes[name]["fires"] == []


@pytest.mark.parametrize("name", ["slump", "slump_100hz"])
def test_a_slump_to_the_floor_alarms_once_lying_still(outcomes, name):
    o = outcomes[name]
    assert len(o["fires"]) == 1, o["fires"]
    assert DECIDE_S - 0.1 <= alarm_delays_s(o)[0] <= ALARM_LIMIT_S
    f = o["fires"][0][1]
    assert f["fall_type"] == 2
    assert f["peak_mg"] < 2000 and f["impulse_mgs"] < 140        # soft: no hard impact
    assert f["pre_deg"] <= 35 and f["turn_in_deg"] >= 60 and f["turn_after_deg"] <= 15 and f["motion_mg"] <= 100


@pytest.mark.parametrize("name", ["fall_out_of_bed", "fall_out_of_bed_200hz"])
def test_a_fall_out_of_bed_alarms(outcomes, name):
    o = outcomes[name]
    assert len(o["fires"]) == 1, o["fires"]
    assert DECIDE_S - 0.1 <= alarm_delays_s(o)[0] <= ALARM_LIMIT_S
    f = o["fires"][0][1]
    assert f["fall_type"] == 3 and f["pre_deg"] > 70 and f["post_deg"] >= 35
    assert f["impulse_mgs"] >= 200 and f["peak_mg"] >= 2500


@pytest.mark.parametrize("name", ["dropped_node", "dropped_node_100hz"])
def test_a_dropped_node_is_counted_not_alarmed(outcomes, name):
    o = outcomes[name]
    assert o["fires"] == []
    assert o["dropped"] == 1


def test_another_mount_is_learned_from_walking(outcomes):
    o = outcomes["mount_z_after_walking"]
    assert len(o["fires"]) == 1
    assert DECIDE_S - 0.1 <= alarm_delays_s(o)[0] <= ALARM_LIMIT_S


def test_another_mount_can_be_configured(outcomes):
    assert len(outcomes["mount_z_configured"]["fires"]) == 1


def test_another_mount_without_walking_or_config_does_not_alarm(outcomes):
    # Documented limitation: upright is unknown, the posture before reads as lying.
    assert outcomes["mount_z_no_walking"]["fires"] == []


def test_the_simulated_boards_fall_trace_alarms_after_walking(outcomes):
    # The trace the simulated node plays (hal/simaccel.py): what the system tests and the demo see.
    o = outcomes["sim_walk_then_fall"]
    assert len(o["fires"]) == 1, o["fires"]
    assert 1.5 <= alarm_delays_s(o)[0] <= ALARM_LIMIT_S


@pytest.mark.parametrize("rate", [50, 100, 200])
def test_update_allocates_nothing_and_the_detector_fits_in_16_kb(outcomes, rate):
    o = outcomes[f"cost_{rate}"]
    assert o["fires"] >= 5, "the 10,000 samples must include falls, so the decision path is measured too"
    assert o["alloc_bytes"] == 0, o
    assert 0 < o["detector_bytes"] <= HEAP_LIMIT_BYTES, o


def test_unknown_parameter_names_are_refused():
    env = {**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"}
    code = ("from srnode.fall import FallDetector\n"
            "try:\n    FallDetector(50, {'trigger_mgg': 1})\nexcept ValueError as e:\n    print('refused', e)\n")
    result = subprocess.run([str(MICROPYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert "refused unknown fall parameter trigger_mgg" in result.stdout, result.stdout + result.stderr


def test_rates_that_are_not_a_multiple_of_50_hz_are_refused():
    env = {**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"}
    code = ("from srnode.fall import FallDetector\n"
            "for r in (25, 49, 50, 75, 100, 150, 200, 400):\n"
            "    try:\n        FallDetector(r)\n        print(r, 'ok')\n"
            "    except ValueError as e:\n        print(r, 'refused', e)\n")
    result = subprocess.run([str(MICROPYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=30)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert {r for r, v in lines.items() if v == "ok"} == {"50", "100", "150", "200", "400"}, result.stdout
    assert lines["25"] == "refused fall detector rate 25 Hz: must be a multiple of 50 Hz"
    assert lines["49"].startswith("refused") and lines["75"].startswith("refused")
