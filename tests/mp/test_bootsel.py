# The loader's choice (bootsel.py) for every state boot.json can be in: argv[1] is an empty folder
# standing for the board's flash.
import json
import os
import sys

import bootsel
from mpcheck import check, done

flash = sys.argv[1]
fw = flash + "/fw"
lines = []


def log(tag, text):
    lines.append(tag + " " + text)


def write(path, doc):
    with open(path, "w") as f:
        f.write(doc if type(doc) is str else json.dumps(doc))


def boot_json():
    with open(fw + "/boot.json") as f:
        return json.load(f)


def slot(name, version):
    os.mkdir(fw + "/" + name)
    write(fw + "/" + name + "/manifest.json", {"version": version, "board": "unix", "files": []})


path0 = list(sys.path)
check("no fw folder: the flashed firmware", bootsel.select(flash, log) == ["", None, False, None])
check("and sys.path untouched", sys.path == path0)
os.mkdir(fw)
slot("a", "0.2.0")
slot("b", "0.3.0")
write(fw + "/boot.json", {"active": "a", "next": None, "count": 0})
check("active slot a", bootsel.select(flash, log) == ["a", "0.2.0", False, None])
check("slot a first on sys.path", sys.path[0] == fw + "/a")
sys.path[:] = path0

write(fw + "/boot.json", {"active": "a", "next": "b", "count": 0})
check("a trial of b", bootsel.select(flash, log) == ["b", "0.3.0", True, None])
check("its one boot is spent before it runs", boot_json() == {"active": "a", "next": "b", "count": 1})
sys.path[:] = path0
check("booted again unconfirmed: back to a", bootsel.select(flash, log) == ["a", "0.2.0", False, "0.3.0"])
check("the trial is over, the rollback kept to report", boot_json() == {"active": "a", "next": None, "count": 1,
                                                                      "rb": "0.3.0"})
check("rollback logged", "fw rollback from=b ver=0.3.0" in lines, lines)
sys.path[:] = path0
check("and stays on a", bootsel.select(flash, log) == ["a", "0.2.0", False, "0.3.0"])
sys.path[:] = path0

write(fw + "/boot.json", {"active": "", "next": "a", "count": 0})
check("a trial from the flashed firmware", bootsel.select(flash, log) == ["a", "0.2.0", True, None])
sys.path[:] = path0
check("rolls back to the flashed firmware", bootsel.select(flash, log) == ["", None, False, "0.2.0"])
sys.path[:] = path0

for bad in ("", "{", "[1, 2]", "null"):
    write(fw + "/boot.json", bad)
    check("boot.json %r: the flashed firmware" % bad, bootsel.select(flash, log) == ["", None, False, None])
sys.path[:] = path0

write(fw + "/boot.json", {"active": "c", "next": None, "count": 0})
check("a slot with no manifest: the flashed firmware", bootsel.select(flash, log) == ["", None, False, None])
check("logged", "fw missing slot=c" in lines, lines)

write(flash + "/manifest.json", {"version": "0.1.5"})
write(fw + "/boot.json", {"active": "", "next": None})
check("the flashed firmware's version from its manifest", bootsel.select(flash, log) == ["", "0.1.5", False, None])
done()
