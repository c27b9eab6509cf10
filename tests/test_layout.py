"""The code's shape: no import cycles, no upward imports, only room_api/ and ward/web/ serve HTTP (tests/layers.py)."""

from __future__ import annotations

from pathlib import Path

from tests import layers

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_has_no_import_cycle_and_no_upward_import() -> None:
    assert layers.layering_problems(ROOT) == []


def test_every_module_of_the_controller_packages_has_a_layer() -> None:
    modules = layers.find_modules(ROOT)
    assert "controller.room.state" in modules and "room_api.app" in modules  # the checker sees the tree
    unplaced = [m for m, path in modules.items() if layers.layer_of(m) is None and path.name != "__init__.py"]
    assert unplaced == []


def test_the_controller_top_level_is_the_wiring_only() -> None:
    top = sorted(p.stem for p in (ROOT / "controller").glob("*.py") if p.stem != "__init__")
    assert top == ["bus", "cli", "model", "runner", "service"]


def test_every_module_opens_with_a_comment_saying_what_it_is_for() -> None:
    missing = []
    for name, path in layers.find_modules(ROOT).items():
        text = path.read_text().lstrip()
        if not (text.startswith('"""') or text.startswith("#")):
            missing.append(name)
    assert missing == []


# ---------------------------------------------------------------- the checker itself catches what it must


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


LOW_HIGH = (("app.low",), ("app.high",))


def test_the_checker_reports_an_upward_import_even_inside_a_function(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/low.py": "def f():\n    from app.high import thing\n",
        "app/high.py": "thing = 1\n",
    })
    problems = layers.layering_problems(root, ("app",), LOW_HIGH)
    assert problems == ["app.low:2: imports app.high from a higher layer (app.high above app.low)"]


def test_the_checker_reports_a_cycle_through_relative_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/high.py": "from . import other\n",
        "app/other.py": "from .high import x\n",
        "app/low.py": "",
    })
    problems = layers.layering_problems(root, ("app",), (("app.low",), ("app.high", "app.other")))
    assert problems == ["import cycle: app.high <-> app.other"]


def test_the_checker_counts_a_package_init_that_runs_on_import(tmp_path: Path) -> None:
    # app.a imports app.pkg.b, which runs app/pkg/__init__.py, which imports app.a: a cycle
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/a.py": "from app.pkg.b import y\n",
        "app/pkg/__init__.py": "from app.a import z\n",
        "app/pkg/b.py": "y = 1\n",
    })
    problems = layers.layering_problems(root, ("app",), (("app",),))
    assert problems == ["import cycle: app.a <-> app.pkg"]


def test_the_checker_reports_http_served_outside_the_api_package(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"app/__init__.py": "", "app/low.py": "from aiohttp import web\n", "app/high.py": ""})
    problems = layers.layering_problems(root, ("app",), LOW_HIGH)
    assert problems == ["app.low:1: imports aiohttp.web: only room_api/ and ward/web/ serve HTTP"]


def test_the_checker_accepts_a_clean_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/low.py": "import json\n",
        "app/high.py": "from .low import json\nfrom app import low\n",
    })
    assert layers.layering_problems(root, ("app",), LOW_HIGH) == []
