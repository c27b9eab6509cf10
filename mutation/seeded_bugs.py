"""Put each of issue 20's realistic bugs into a copy of the project, one at a time, and show which
tests catch it (python mutation/seeded_bugs.py; `make seeded-bugs`).

The working tree is never touched: every bug goes into a fresh copy in a temporary folder, where
the given test files run against it. A bug that no test catches makes the script exit 1.
docs/testing.md holds the table this prints.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ("controller", "room_api", "sensors", "integrations", "ward", "firmware", "tests", "docs", "pyproject.toml")


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug('"I\'m OK" window <= becomes < (30.000 s exactly)', "controller/room/presence.py",
        "if now_ms - call.raised_at_ms <= window_ms:", "if now_ms - call.raised_at_ms < window_ms:",
        ("tests/test_limits.py",)),
    Bug("information-level calls sound the in-room tone", "controller/room/calls.py",
        'sounding = [c for c in calls if not c.answered and not c.held and c.ctype.level != "info"]',
        "sounding = [c for c in calls if not c.answered and not c.held]", ("tests/test_limits.py",)),
    Bug("a reminder after a staff visit keeps the visit", "controller/room/calls.py",
        "            call.present_at_ms = call.present_by = None\n            call.level = 1\n",
        "            call.level = 1\n", ("tests/test_limits.py",)),
    Bug("environment hysteresis <= becomes <", "controller/room/environment.py",
        "value <= rule.high - rule.hysteresis", "value < rule.high - rule.hysteresis", ("tests/test_limits.py",)),
    Bug("battery-replaced >= becomes > (3.90 V exactly)", "controller/room/supervision.py",
        "value >= sup.battery_replaced_v", "value > sup.battery_replaced_v", ("tests/test_limits.py",)),
    # Protocol v2 has no window: a frame must be above the node's highest accepted s (docs/protocol.md).
    Bug("sequence check <= becomes < (a frame reusing the highest accepted s)", "controller/link/gateway.py",
        "if msg.seq <= max_seq:", "if msg.seq < max_seq:", ("tests/test_limits.py",)),
    Bug("a hello reusing the highest accepted seq is accepted", "controller/link/gateway.py",
        "hello.seq <= mark.max_seq", "hello.seq < mark.max_seq", ("tests/test_limits.py",)),
    Bug("no hello timeout", "controller/link/gateway.py",
        "self.link.set_deadline(self.gateway.hello_timeout_s)", "self.link.set_deadline(None)",
        ("tests/test_limits.py",)),
    Bug("idle link closed after 30 heartbeats instead of 3", "controller/link/gateway.py",
        "return 3 * self.controller.config.heartbeat_ms", "return 30 * self.controller.config.heartbeat_ms",
        ("tests/test_limits.py",)),
    Bug("stream duplicate check removed", "room_api/app.py",
        "                    if record.id <= newest:\n                        continue\n", "", ("tests/test_stream.py",)),
    Bug("stream catch-up removed", "room_api/app.py",
        "                        await catch_up(record.id - 1)\n", "",
        ("tests/test_stream.py",)),
    Bug("synchronous=OFF on the event log", "controller/store/events.py",
        'db.execute("PRAGMA synchronous=FULL")', 'db.execute("PRAGMA synchronous=OFF")', ("tests/test_limits.py",)),
    Bug("information tier escalating at 60 s", "controller/room/config.py",
        '"info": TierTimers(600.0, 1800.0)', '"info": TierTimers(60.0, 1800.0)', ("tests/test_limits.py",)),
    Bug("CO2 alarm after 10 min", "controller/room/config.py",
        'EnvRule("co2_ppm", None, 1100.0, 100.0, 1800.0, 60.0)', 'EnvRule("co2_ppm", None, 1100.0, 100.0, 600.0, 60.0)',
        ("tests/test_limits.py",)),
    Bug("an interrupted room rollout lets the ward rollout go on", "ward/firmware.py",
        'if mine["state"] in ("stopped", "interrupted"):', 'if mine["state"] == "stopped":',
        ("tests/test_ward_firmware.py",)),
    Bug("a held ward rollout never goes on", "ward/firmware.py",
        '            rollout.state, rollout.reason = "running", None\n', "", ("tests/test_ward_firmware.py",)),
    Bug("a call's timeline trimmed from its start", "controller/room/calls.py",
        "del timeline[TIMELINE_FIRST_STEPS]", "del timeline[0]", ("tests/test_call_timeline.py",)),
    Bug("`firmware rollout` gives up at the first unanswered poll", "controller/ota/cli.py",
        "ROLLOUT_UNREACHABLE_S = 120.0", "ROLLOUT_UNREACHABLE_S = 0.0", ("tests/test_rollout_cli.py",)),
    Bug("`smartroom run` no longer freezes its start-up heap", "controller/cli.py",
        "        _freeze_startup_heap()\n", "", ("tests/test_room_network.py",)),
    Bug("an update's download starts afresh after a power cut", "firmware/srnode/ota.py",
        "    if n > size:", "    if n >= 0:", ("tests/test_firmware_ota.py",)),
    Bug("an offer during its own download does not ask again for the awaited chunk", "firmware/srnode/ota.py",
        '            self.report("accepted", ver)\n            self._ask()\n',
        '            self.report("accepted", ver)\n', ("tests/test_firmware_ota.py",)),
    Bug("a node back mid-download is not offered the bundle again", "controller/ota/server.py",
        'update.state not in ("offered", "accepted")', 'update.state not in ("offered",)',
        ("tests/test_firmware_ota.py",)),
    Bug("a spoilt staged file refuses the update", "firmware/srnode/ota.py",
        '                if not n:\n                    return "bad_hash"\n', '                return "bad_hash"\n',
        ("tests/test_firmware_ota.py",)),
    Bug("a locked database while keeping the ward cursor ends the uplink", "controller/uplink/uplink.py",
        "        except sqlite3.Error as exc:  # the events went out all the same",
        "        except ZeroDivisionError as exc:  # the events went out all the same", ("tests/test_ward_uplink.py",)),
)

# A failed test's id: path::name and its parameters, which may hold spaces (pytest drops the
# " - message" part when the line is too long for its width).
_FAILED_RE = re.compile(r"^FAILED (\S+?::[^\s\[]+(?:\[[^\]]*\])?)", re.M)


def run(bug: Bug, workdir: Path, python: str) -> list[str]:
    """The tests that fail with ``bug`` in place (an empty list: the bug went unnoticed)."""
    tree = workdir / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    for name in COPY:
        src = ROOT / name
        (shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
         if src.is_dir() else shutil.copy2(src, tree / name))
    target = tree / bug.path
    text = target.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: the code to change is not in {bug.path} exactly once; update BUGS")
    target.write_text(text.replace(bug.old, bug.new))
    env = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                             *bug.tests], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode not in (0, 1):  # not "tests failed": they could not run (an import error, ...)
        raise SystemExit(f"{bug.name}: pytest exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return _FAILED_RE.findall(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--only", help="run only the bugs whose name contains this")
    args = parser.parse_args(argv)
    for bug in BUGS:  # every bug's code first, so a stale entry stops the run before it starts
        if (ROOT / bug.path).read_text().count(bug.old) != 1:
            raise SystemExit(f"{bug.name}: the code to change is not in {bug.path} exactly once; update BUGS")
    missed = 0
    print("| bug put in | caught by |\n|---|---|")
    with tempfile.TemporaryDirectory(prefix="smartroom-bugs-") as tmp:
        for bug in BUGS:
            if args.only and args.only not in bug.name:
                continue
            failed = run(bug, Path(tmp), args.python)
            missed += not failed
            shown = "<br>".join(f"`{t.split('::', 1)[1]}`" for t in failed[:4]) or "**not caught**"
            more = f" (+{len(failed) - 4} more)" if len(failed) > 4 else ""
            print(f"| {bug.name} | {shown}{more} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
