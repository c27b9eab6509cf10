"""Firmware bundles: the node firmware compiled with mpy-cross, a manifest and its Ed25519 signature.

    bundle/
      manifest.json   canonical JSON: {"board", "files": [{"h": sha256 hex, "n": bytes, "p": path}], "fmt", "version"}
      manifest.sig    64 bytes: Ed25519 over SIG_CONTEXT + sha256(manifest.json), by the firmware key
      srnode/*.mpy, drivers/*.mpy, hal/*.mpy

The bundle's hash is the SHA-256 of ``manifest.json``, which pins every file by its hash; the same
source gives the same bytes (mpy-cross is deterministic, the manifest canonical, Ed25519
deterministic), so the same bundle hash. The entry points (``main.py``, ``sim_main.py``,
``bootsel.py``) are not in a bundle: they are the loader, written once by ``smartroom firmware
flash``, that picks which bundle runs (``firmware/bootsel.py``).

A node holds only the public half of the firmware key: it verifies the signature itself
(``firmware/srnode/ed25519.py``), so no node's flash can sign firmware for the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..sim.firmware import ENTRY_POINTS, firmware_dir, mpy_cross

# What the signature covers: this context, then the manifest's SHA-256 (32 bytes). Signing the digest
# rather than the manifest keeps the node's SHA-512 (plain Python in MicroPython) to one block.
SIG_CONTEXT = b"smartroom firmware manifest v1\0"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT = 1
VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")
# Boards a bundle is built for, and mpy-cross's native-code arch for each (only @native code uses it).
BOARDS = {"esp32s3": "xtensawin", "rp2-pico-w": "armv6m", "unix": None}
# Modules only the unix port's simulated hardware needs: left out of a board's bundle.
SIM_ONLY = frozenset({"hal/sim.py", "hal/simdev.py", "hal/simaccel.py", "hal/simadxl345.py",
                      "hal/simtrace.py", "hal/scenario.py", "hal/simota.py"})


class BundleError(ValueError):
    """A bundle that is incomplete, altered, or not signed by the key it is checked against."""


@dataclass(frozen=True, slots=True)
class BundleFile:
    path: str      # inside the bundle, "/"-separated
    sha256: str    # hex
    size: int


@dataclass(frozen=True, slots=True)
class Bundle:
    root: Path
    version: str
    board: str
    files: tuple[BundleFile, ...]
    manifest: bytes
    signature: bytes

    @property
    def sha256(self) -> str:
        """The bundle hash: the manifest's SHA-256, which pins every file."""
        return hashlib.sha256(self.manifest).hexdigest()

    def data(self, index: int) -> bytes:
        """Item ``index`` as the node fetches it: 0 the manifest, 1 … the manifest's files in order."""
        if index == 0:
            return self.manifest
        return (self.root / self.files[index - 1].path).read_bytes()


def version_tuple(version: str) -> tuple[int, int, int]:
    m = VERSION_RE.match(version)
    if not m:
        raise BundleError(f"version {version!r} is not MAJOR.MINOR.PATCH (each 0-9999)")
    return int(m[1]), int(m[2]), int(m[3])


def source_version(src: Path | None = None) -> str:
    """``FW_VERSION`` from the firmware's ``srnode/__init__.py``."""
    text = ((src or firmware_dir()) / "srnode" / "__init__.py").read_text()
    m = re.search(r'^FW_VERSION\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise BundleError("no FW_VERSION in srnode/__init__.py")
    return m[1]


def manifest_bytes(version: str, board: str, files: list[BundleFile]) -> bytes:
    doc = {"board": board, "fmt": FORMAT, "version": version,
           "files": [{"h": f.sha256, "n": f.size, "p": f.path} for f in sorted(files, key=lambda f: f.path)]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signed_message(manifest: bytes) -> bytes:
    return SIG_CONTEXT + hashlib.sha256(manifest).digest()


# --------------------------------------------------------------------------- keys


def generate_key(path: Path) -> bytes:
    """A new firmware signing key at ``path`` (PEM, owner-only); returns the 32-byte public key."""
    if path.exists():
        raise BundleError(f"{path} exists: refusing to overwrite a firmware key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_bytes(key)


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read the firmware key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an Ed25519 key")
    return key


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --------------------------------------------------------------------------- build


def _compile(src: Path, rel: Path, target: Path, arch: str | None) -> None:
    cmd = [mpy_cross(), "-o", str(target), "-s", rel.as_posix(), rel.as_posix()]
    if arch:
        cmd.append(f"-march={arch}")
    result = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(f"mpy-cross failed on {rel}:\n{result.stderr}")


def build_bundle(out: Path, key: Ed25519PrivateKey, *, board: str = "esp32s3", version: str | None = None,
                 src: Path | None = None, progress=None) -> Bundle:
    """Compile the firmware into a signed bundle at ``out`` (emptied first); returns it, checked."""
    if board not in BOARDS:
        raise BundleError(f"board {board!r} is not one of {sorted(BOARDS)}")
    src = (src or firmware_dir()).resolve()
    version = version or source_version(src)
    version_tuple(version)
    out = out.resolve()  # mpy-cross runs in the firmware folder: a relative path would land there
    if out.exists():
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise BundleError(f"{out} is not empty and not a bundle: refusing to empty it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = []
    sources = sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)
    for path in sources:
        rel = path.relative_to(src)
        if rel.parent == Path(".") and rel.name in ENTRY_POINTS:
            continue
        if board != "unix" and rel.as_posix() in SIM_ONLY:
            continue
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        _compile(src, rel, target, BOARDS[board])
        data = target.read_bytes()
        files.append(BundleFile(rel.with_suffix(".mpy").as_posix(), hashlib.sha256(data).hexdigest(), len(data)))
        if progress:
            progress(files[-1])
    manifest = manifest_bytes(version, board, files)
    (out / MANIFEST).write_bytes(manifest)
    (out / SIGNATURE).write_bytes(key.sign(signed_message(manifest)))
    return load_bundle(out, public_bytes(key))


def load_bundle(root: Path, public_key: bytes) -> Bundle:
    """Read a bundle and check it whole: signature by ``public_key``, then every file's size and hash."""
    try:
        manifest = (root / MANIFEST).read_bytes()
        signature = (root / SIGNATURE).read_bytes()
    except OSError as exc:
        raise BundleError(f"{root} is not a firmware bundle: {exc}") from exc
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signed_message(manifest))
    except (InvalidSignature, ValueError) as exc:
        raise BundleError(f"{root}: the manifest's signature does not verify with this firmware key") from exc
    doc = json.loads(manifest)
    files = tuple(BundleFile(f["p"], f["h"], f["n"]) for f in doc["files"])
    for f in files:
        path = root / f.path
        if ".." in Path(f.path).parts or not path.is_file():
            raise BundleError(f"{root}: {f.path} is missing")
        data = path.read_bytes()
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            raise BundleError(f"{root}: {f.path} does not match its hash in the manifest")
    version_tuple(doc["version"])
    return Bundle(root, doc["version"], doc["board"], files, manifest, signature)


def installed_size(bundle: Bundle) -> int:
    return sum(f.size for f in bundle.files) + len(bundle.manifest) + len(bundle.signature)


def tree_digest(root: Path) -> str:
    """SHA-256 over every file of a folder (names and bytes): equal for byte-identical builds."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


