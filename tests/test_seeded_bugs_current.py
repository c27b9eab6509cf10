"""`make seeded-bugs` cannot rot: every bug it puts in names code that is in its file exactly once,
and every test file it runs exists. (Running the bugs takes ~20 minutes; this takes milliseconds.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("seeded_bugs", ROOT / "mutation" / "seeded_bugs.py")
seeded_bugs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("seeded_bugs", seeded_bugs)  # its dataclasses look their module up by name
_spec.loader.exec_module(seeded_bugs)


@pytest.mark.parametrize("bug", seeded_bugs.BUGS, ids=lambda b: b.name)
def test_each_seeded_bug_names_code_that_is_there_once(bug):
    text = (ROOT / bug.path).read_text()
    assert text.count(bug.old) == 1, f"{bug.path} no longer holds the code of '{bug.name}': update BUGS"
    assert bug.new != bug.old
    for test in bug.tests:
        assert (ROOT / test.split("::")[0]).exists(), test
