"""The project's import graph and its layering rules (used by tests/test_layout.py).

Every import counts: module level, inside functions, and under ``TYPE_CHECKING`` — a lazy import
is still a dependency a reader has to hold in mind. Importing ``a.b.c`` also runs ``a`` and
``a.b``'s ``__init__``, so those count for cycles too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# The layers, lowest first: a module may import from its own layer or a lower one, never a higher.
# A module's layer is the entry with the longest prefix of its dotted name. This is the path an
# event takes, read from the bottom (docs/architecture.md): the shared vocabulary, then storage,
# the room's rules, the service that wires them, and the adapters around it (node link, Pi-attached
# sensors, HTTP API), then what starts them.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("controller.model",),                                    # messages and ids that cross layers
    ("controller.link.protocol", "controller.security", "controller.sim.firmware",
     "controller.uplink.wire", "controller.uplink.client",   # wire formats: protocol v2, the ward's MQTT
     "controller.ota.bundle", "controller.ota.flash"),      # firmware bundles (build, sign, check), flashing
    ("controller.store",),                                    # the event log, readings history
    ("controller.room",),                                     # configuration, rules, reports
    ("controller.bus",),                                      # live fan-out of stored records
    ("controller.service",),                                  # decide -> store -> apply -> publish
    ("controller.link", "controller.sim.nodes", "controller.fall_eval",  # node gateway; tools
     "controller.uplink", "controller.ota"),                  # the ward uplink; firmware updates over the link
    ("sensors",),                                             # Pi-attached sources
    ("integrations",),                                        # the hospital's systems: HL7, FHIR, webhooks
    ("room_api",),                                            # the room's HTTP
    ("ward",),                                                # the ward console: a service of its own
    ("controller.runner",),                                   # one room, all pieces started together
    ("controller.sim.demo",),
    ("controller.cli",),
)
PACKAGES = ("controller", "sensors", "room_api", "ward", "integrations")
NOT_CPYTHON = {"controller.fall_eval.mp_runner"}  # a MicroPython script, run as a file
HTTP_SERVER_IMPORTS = {"aiohttp.web", "aiohttp_sse"}  # only the two web packages serve HTTP
HTTP_PACKAGES = ("room_api", "ward.web")  # the room's API and pages; the ward console's


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    target: str      # the module imported (a submodule where ``from pkg import sub`` names one)
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            name = module_name(root, path)
            if name not in NOT_CPYTHON and "__pycache__" not in path.parts:
                found[name] = path
    return found


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in one file, project modules and others alike, as absolute module names."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if sub in modules or base not in modules:  # a submodule, or a name of an outside package
                    found.append(Import(name, sub, node.lineno))
                else:
                    found.append(Import(name, base, node.lineno))
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """importer -> {imported project module (or a package whose __init__ it runs): line}."""
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for name, path in modules.items():
        own = set(_ancestors(name))
        for imp in imports_of(name, path, modules):
            if imp.target not in modules:
                continue
            for target in [*_ancestors(imp.target), imp.target]:
                if target in modules and target != name and target not in own:
                    edges[name].setdefault(target, imp.line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(groups)


def layer_of(name: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), i)
    return None if best is None else best[1]


def layering_problems(root: Path, packages: tuple[str, ...] = PACKAGES,
                      layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Upward imports, modules without a layer, import cycles and HTTP served outside the web packages."""
    modules = find_modules(root, packages)
    problems: list[str] = []
    for name, path in modules.items():
        mine = layer_of(name, layers)
        imports = imports_of(name, path, modules)
        project = [imp for imp in imports if imp.target in modules]
        if mine is None and project and not (path.name == "__init__.py" and all(
                imp.target.startswith(name + ".") for imp in project)):
            problems.append(f"{name}: in no layer (add it to tests/layers.py LAYERS)")
            continue
        for imp in project:
            theirs = layer_of(imp.target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{name}:{imp.line}: imports {imp.target} from a higher layer "
                                f"({' / '.join(layers[theirs])} above {' / '.join(layers[mine])})")
        if not any(name == pkg or name.startswith(pkg + ".") for pkg in HTTP_PACKAGES):
            for imp in imports:
                if imp.target in HTTP_SERVER_IMPORTS:
                    problems.append(f"{name}:{imp.line}: imports {imp.target}: only "
                                    f"{' and '.join(p.replace('.', '/') + '/' for p in HTTP_PACKAGES)} serve HTTP")
    for group in cycles(graph(modules)):
        problems.append("import cycle: " + " <-> ".join(group))
    return problems
