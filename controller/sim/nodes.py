"""Run the real node firmware in MicroPython unix-port processes (simulated hardware).

Used by ``smartroom demo``, the tests and the benchmarks. Each node is its own process with a
board-like heap limit; its log lines (docs/firmware.md) are parsed into :class:`NodeLine`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .firmware import DEFAULT_HEAP, RESET_EXIT, compiled_firmware, micropython_exe

STOP_TIMEOUT_S = 3.0        # SIGTERM first; a node that does not exit by then is killed


@dataclass(frozen=True, slots=True)
class NodeLine:
    """One log line of a node: ``@<node_ms> <tag> key=value ...``."""

    node_ms: int
    tag: str
    fields: dict[str, str]
    raw: str

    @classmethod
    def parse(cls, raw: str) -> "NodeLine | None":
        if not raw.startswith("@"):
            return None
        head, _, rest = raw.partition(" ")
        try:
            node_ms = int(head[1:])
        except ValueError:
            return None
        tag, _, rest = rest.partition(" ")
        fields = {}
        for part in rest.split():
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value
        return cls(node_ms, tag, fields, raw)


class SimNode:
    """One firmware node process. ``async with SimNode(...)``, then :meth:`wait_for` its lines."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, heap: str = DEFAULT_HEAP,
                 on_line: Callable[["SimNode", NodeLine], None] | None = None) -> None:
        self.config = config
        self.node_id: str = config["node_id"]
        self.workdir = Path(workdir)
        self.heap = heap
        self.on_line = on_line
        self.lines: list[NodeLine] = []
        self.other_output: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._stopping = False

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.node_id}.json"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self._stopping = False
        self.proc = await self._spawn()
        self._reader = asyncio.create_task(self._read(), name=f"node-{self.node_id}-stdout")

    async def _spawn(self) -> asyncio.subprocess.Process:
        fw = compiled_firmware()
        return await asyncio.create_subprocess_exec(
            micropython_exe(), "-X", f"heapsize={self.heap}", str(fw / "sim_main.py"), str(self.config_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(fw))

    async def _read(self) -> None:
        while True:
            assert self.proc is not None and self.proc.stdout is not None
            while raw := await self.proc.stdout.readline():
                text = raw.decode(errors="replace").rstrip()
                line = NodeLine.parse(text)
                async with self._changed:
                    if line is None:
                        self.other_output.append(text)
                    else:
                        self.lines.append(line)
                        if self.on_line is not None:
                            self.on_line(self, line)
                    self._changed.notify_all()
            if await self.proc.wait() != RESET_EXIT or self._stopping:
                break
            self.proc = await self._spawn()  # it asked for a reset (a firmware update): boot it again, as a board would
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, tag: str | None, timeout_s: float = 20.0, start: int = 0, **fields: str) -> NodeLine:
        """The first line (from index ``start``) with ``tag`` (None: any) and the given field values."""

        def match() -> NodeLine | None:
            for line in self.lines[start:]:
                if tag in (None, line.tag) and all(line.fields.get(k) == str(v) for k, v in fields.items()):
                    return line
            return None

        async def find() -> NodeLine:
            async with self._changed:
                while (found := match()) is None:
                    if self.proc is not None and self.proc.returncode is not None and self._reader.done():
                        raise AssertionError(f"node {self.node_id} exited ({self.proc.returncode}) before "
                                             f"'{tag} {fields}'; output: {self.tail()}")
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(find(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"node {self.node_id}: no '{tag} {fields}' within {timeout_s} s; "
                                 f"output: {self.tail()}") from None

    def tail(self, n: int = 15) -> str:
        return "\n".join([line.raw for line in self.lines[-n:]] + self.other_output[-5:])

    async def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is None or self.proc.returncode is not None:
            if self._reader is not None:
                await self._reader
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> "SimNode":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
