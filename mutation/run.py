"""Run mutmut on the modules in pyproject's [tool.mutmut], all of them or a sample per module.

    python mutation/run.py               # every mutant (hours on two shared cores)
    python mutation/run.py --sample 80   # 80 mutants per module, drawn with a fixed seed, mutants run one at a time
    python mutation/run.py --sample 80 --module controller/link/gateway.py   # that module's share only

Results stay in mutants/ (a second run goes on where one stopped); mutation/score.py prints the
table of docs/testing.md from them.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = str(Path(sys.executable).with_name("mutmut"))


def mutants_by_module() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for meta in sorted((ROOT / "mutants" / "controller").rglob("*.py.meta")):
        names = sorted(json.loads(meta.read_text()).get("exit_code_by_key", {}))
        if names:
            found[str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")] = names
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, help="mutants per module (default: all)")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--module", action="append", help="only this module's sample (repeatable)")
    parser.add_argument("--max-children", default="1", help="mutants run at once (default 1: a shared machine)")
    args = parser.parse_args(argv)
    run = [MUTMUT, "run", "--max-children", args.max_children]
    if args.sample is None:
        return subprocess.run(run, cwd=ROOT).returncode
    # mutmut writes every mutant's name while generating, before it refuses a name that matches
    # none: that run lists the mutants without running one. Then the sample is drawn.
    subprocess.run(run + ["no-such-mutant"], cwd=ROOT, capture_output=True)
    by_module = mutants_by_module()
    if not by_module:
        raise SystemExit("mutmut generated no mutants: see `mutmut run` for why")
    chosen: list[str] = []
    for module, names in by_module.items():
        if args.module and module not in args.module:
            continue
        # Each module shuffles with its own seeded stream: its sample is the same whichever modules
        # run with it, and a larger --sample holds the smaller one (the first N of one order).
        order = list(names)
        random.Random(f"{args.seed}:{module}").shuffle(order)
        chosen += order[:args.sample]
        print(f"{module}: {min(args.sample, len(names))} sampled mutants of {len(names)}", flush=True)
    # One mutmut run for all of them: each run starts by running every selected test once, clean.
    return subprocess.run(run + chosen, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
