"""The mutation score per module from mutmut's results in mutants/ (python mutation/score.py).

Killed and timed-out mutants count as caught; "no tests" (no selected test reaches the code)
counts as surviving. A survivor is *equivalent* (it behaves as the original does, so no test can
catch it) when it matches a rule below; equivalent mutants are counted apart and left out of the
score. The rules: a change of letter case inside an SQL statement (SQLite reads keywords and
names in any case), and each entry of mutation/equivalent.toml (the function, the text of the
mutated line, optionally the line after it, and why it changes nothing). ``--survivors`` lists every other survivor by name,
for `mutmut show NAME`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAUGHT = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}
SQL_RE = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE|CREATE|BEGIN|COMMIT|ROLLBACK|PRAGMA|ALTER)\b""", re.I)


def changed_lines(name: str, module: str) -> tuple[list[str], list[str], list[str]]:
    """The mutant's removed and added lines (code only), and the line after each added one, from
    mutmut's own diff."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # mutmut is the `mutation` extra

    diff = [line for line in get_diff_for_mutant(name, path=module).splitlines()
            if not line.startswith(("---", "+++", "@@"))]
    removed = [line[1:].strip() for line in diff if line.startswith("-")]
    added = [line[1:].strip() for line in diff if line.startswith("+")]
    after = [diff[i + 1][1:].strip() if i + 1 < len(diff) else "" for i, line in enumerate(diff) if line.startswith("+")]
    return removed, added, after


def equivalent_reason(name: str, module: str, listed: list[dict[str, str]]) -> str | None:
    removed, added, after = changed_lines(name, module)
    if len(removed) == len(added) == 1 and removed[0] != added[0] and removed[0].lower() == added[0].lower() \
            and SQL_RE.search(removed[0]):
        return "letter case in an SQL statement"
    function = name.rsplit("__mutmut_", 1)[0]
    for entry in listed:
        if entry["function"] == function and any(entry["mutated"] in line and entry.get("then", "") in nxt
                                                 for line, nxt in zip(added, after)):
            return entry["reason"]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list the survivors not judged equivalent")
    parser.add_argument("--equivalent", action="store_true", help="list the equivalent survivors and why")
    parser.add_argument("--min", type=float, default=0.0, help="exit 1 below this score (percent)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # mutmut reads mutants/ relative to the working directory
    listed = tomllib.loads((ROOT / "mutation" / "equivalent.toml").read_text())["equivalent"]
    rows, survivors, equivalents, total = [], [], [], Counter()
    for meta in sorted((ROOT / "mutants" / "controller").rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        count = Counter()
        for name, code in codes.items():
            if code is None:
                continue  # not in this run's sample
            kind = "caught" if code in CAUGHT else "survived" if code in SURVIVED else "other"
            if kind == "survived" and (why := equivalent_reason(name, module, listed)) is not None:
                kind = "equivalent"
                equivalents.append(f"{name}: {why}")
            elif kind == "survived":
                survivors.append(name)
            count[kind] += 1
        if count:
            rows.append((module, count))
            total.update(count)
    print("| module | checked | caught | survived | equivalent | score |\n|---|---:|---:|---:|---:|---:|")
    for module, c in rows + [("**all**", total)]:
        judged = c["caught"] + c["survived"]
        score = 100 * c["caught"] / judged if judged else 0.0
        print(f"| {module} | {sum(c.values())} | {c['caught']} | {c['survived']} | {c['equivalent']} | {score:.1f} % |")
    if total["other"]:
        print(f"\n{total['other']} mutants ended otherwise (crashed or interrupted); not in the score")
    if args.survivors:
        print("\n".join(sorted(survivors)))
    if args.equivalent:
        print("\n".join(sorted(equivalents)))
    judged = total["caught"] + total["survived"]
    return 1 if judged and 100 * total["caught"] / judged < args.min else 0


if __name__ == "__main__":
    sys.exit(main())
