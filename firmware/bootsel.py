# The loader's choice of firmware bundle, made before any firmware module is imported
# (docs/firmware.md, Updates). Flashed with main.py / sim_main.py; never updated over the air.
#
#     fw = bootsel.select(FLASH, log)   # [slot, version, trial, rolled_back]; the slot first on sys.path
#
# FLASH/fw/boot.json: {"active": slot, "next": slot on trial, "count": its boots, "rb": version}. A slot is
# FLASH/fw/a or FLASH/fw/b, a bundle checked whole before it was renamed into place; slot "" is
# the firmware flashed by USB. An update stages the new bundle in the slot that is not running and
# sets "next" (the trial). A trial runs for one boot (the count is written before it runs): the new firmware
# confirms on its first verified welcome (srnode/ota.py); a trial that crashes, loses power or
# misses its deadline before that is not booted again, and the node rolls back by itself. Each
# write of boot.json is a new file renamed over the old (atomic on littlefs and POSIX): a power
# cut leaves the old state or the new, and either one boots.
# Few and built-in names on purpose (load, dump, next, count): every new identifier here is
# interned on every boot, and the full-config node sits near the qstr limit (docs/firmware.md, Heap).
import json
import os
import sys


def load(p):
    try:
        with open(p) as f:
            state = json.load(f)
        return state if type(state) is dict else {}
    except (OSError, ValueError):
        return {}


def dump(p, state):
    with open(p + ".tmp", "w") as f:
        json.dump(state, f)
    os.rename(p + ".tmp", p)


def select(path, log):
    p = path + "/fw/boot.json"
    fw = p[:-9]  # path/fw/
    state = load(p)
    name = state.get("active") or ""
    t = state.get("next")
    rb = state.get("rb")
    if t:
        if state.get("count", 0):  # booted once and never confirmed: back to the active slot
            rb = state["rb"] = load(fw + t + "/manifest.json").get("version", "?")
            state["next"] = None
            dump(p, state)
            log("fw", "rollback from=%s ver=%s" % (t, rb))
            t = None
        else:
            state["count"] = 1  # spent before it runs: a crash or a power cut counts
            dump(p, state)
            name = t
    version = None
    if name:
        version = load(fw + name + "/manifest.json").get("version")
        if version is None:  # never expected (a slot is renamed into place whole): the flashed firmware
            log("fw", "missing slot=" + name)
            name = ""
            t = None
        else:
            sys.path.insert(0, fw + name)
    if not name:  # flashed by USB: its manifest is at the root (none on the simulator: FW_VERSION)
        version = load(path + "/manifest.json").get("version")
    log("fw", "slot=%s ver=%s trial=%d" % (name or "-", version or "-", t is not None))
    return [name, version, t is not None, rb]
