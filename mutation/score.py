"""The mutation score per module from mutmut's results in mutants/ (python mutation/score.py).

Killed and timed-out mutants count as caught; "no tests" (no selected test reaches the code)
counts as surviving. ``--survivors`` lists every survivor by name, for `mutmut show NAME`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAUGHT = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true")
    parser.add_argument("--min", type=float, default=0.0, help="exit 1 below this score (percent)")
    args = parser.parse_args(argv)
    rows, survivors, total = [], [], Counter()
    for meta in sorted((ROOT / "mutants" / "controller").rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if not codes:
            continue
        count = Counter()
        for name, code in codes.items():
            kind = "caught" if code in CAUGHT else "survived" if code in SURVIVED else \
                "not checked" if code is None else "other"
            count[kind] += 1
            if kind == "survived":
                survivors.append(name)
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        rows.append((module, count))
        total.update(count)
    print("| module | mutants | caught | survived | not run | score |\n|---|---:|---:|---:|---:|---:|")
    for module, c in rows + [("**all**", total)]:
        checked = c["caught"] + c["survived"]
        score = 100 * c["caught"] / checked if checked else 0.0
        print(f"| {module} | {sum(c.values())} | {c['caught']} | {c['survived']} | "
              f"{c['not checked'] + c['other']} | {score:.1f} % |")
    if args.survivors:
        print("\n".join(sorted(survivors)))
    checked = total["caught"] + total["survived"]
    return 1 if checked and 100 * total["caught"] / checked < args.min else 0


if __name__ == "__main__":
    sys.exit(main())
