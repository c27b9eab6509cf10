"""Firmware bundles: reproducible builds, signatures checked by the controller and (in MicroPython)
by the node, the loader's choice of bundle, and flashing a board with mpremote (a stand-in)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.ota import bundle as fwb
from controller.ota.flash import FlashError, flash, plan
from tests.nodepeer import FIRMWARE, ROOT
from tests.test_firmware_units import MP_TESTS, run_mp


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "fw.pem"
    fwb.generate_key(path)
    return fwb.load_key(path)


@pytest.fixture(scope="module")
def built(key, tmp_path_factory):
    return fwb.build_bundle(tmp_path_factory.mktemp("b") / "esp", key, board="esp32s3")


def test_same_source_same_bundle_hash_and_bytes(key, built, tmp_path):
    again = fwb.build_bundle(tmp_path / "again", key, board="esp32s3")
    assert again.sha256 == built.sha256
    assert fwb.tree_digest(again.root) == fwb.tree_digest(built.root)  # signature included: Ed25519 is deterministic
    assert again.version == fwb.source_version() and again.board == "esp32s3"
    names = {f.path for f in again.files}
    assert "srnode/runtime.mpy" in names and "srnode/ota.mpy" in names and "srnode/ed25519.mpy" in names
    assert not names & {"main.mpy", "bootsel.mpy", "sim_main.mpy", "hal/sim.mpy", "hal/simota.mpy"}  # loader, simulator out
    doc = json.loads(again.manifest)
    assert doc["files"] == sorted(doc["files"], key=lambda f: f["p"])


def test_a_changed_source_or_version_changes_the_bundle_hash(key, built, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    drv = src / "drivers" / "tone.py"
    drv.write_text(drv.read_text() + "\n_X = 1\n")
    changed = fwb.build_bundle(tmp_path / "changed", key, board="esp32s3", src=src)
    assert changed.sha256 != built.sha256
    assert {f.path for f in changed.files if f not in built.files} == {"drivers/tone.mpy"}
    assert fwb.build_bundle(tmp_path / "v", key, board="esp32s3", version="9.0.0").sha256 != built.sha256


def test_the_controller_refuses_altered_or_foreign_bundles(key, built, tmp_path):
    pub = fwb.public_bytes(key)
    assert fwb.load_bundle(built.root, pub).sha256 == built.sha256
    with pytest.raises(fwb.BundleError, match="signature"):
        fwb.load_bundle(built.root, fwb.public_bytes(Ed25519PrivateKey.generate()))
    copy = tmp_path / "copy"
    shutil.copytree(built.root, copy)
    victim = copy / built.files[0].path
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(fwb.BundleError, match="does not match its hash"):
        fwb.load_bundle(copy, pub)
    victim.unlink()
    with pytest.raises(fwb.BundleError, match="missing"):
        fwb.load_bundle(copy, pub)
    (copy / "manifest.json").write_bytes(built.manifest.replace(b'"esp32s3"', b'"unix"'))
    with pytest.raises(fwb.BundleError, match="signature"):
        fwb.load_bundle(copy, pub)


@pytest.mark.parametrize("version, ok", [("0.0.0", True), ("1.2.3", True), ("9999.9999.9999", True),
                                         ("10000.0.0", False), ("1.2", False), ("1.2.3.4", False),
                                         ("01.2.3", False), ("1.2.x", False), ("", False)])
def test_versions_are_three_small_numbers(version, ok):
    if ok:
        assert fwb.version_tuple(version) == tuple(int(p) for p in version.split("."))
    else:
        with pytest.raises(fwb.BundleError):
            fwb.version_tuple(version)


def test_build_never_empties_a_folder_that_is_not_a_bundle(key, tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(fwb.BundleError, match="not empty"):
        fwb.build_bundle(tmp_path, key)
    assert (tmp_path / "precious.txt").exists()


def test_the_key_file_is_owner_only_and_never_overwritten(tmp_path):
    pub = fwb.generate_key(tmp_path / "k.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert fwb.public_bytes(fwb.load_key(tmp_path / "k.pem")) == pub
    with pytest.raises(fwb.BundleError, match="exists"):
        fwb.generate_key(tmp_path / "k.pem")


def test_the_node_verifies_ed25519_in_micropython(key, built, tmp_path):
    # RFC 8032 section 7.1, tests 1 and 3, then the controller's own signature of this bundle
    rfc = [("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
           ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a")]
    pub = fwb.public_bytes(key).hex()
    msg = fwb.signed_message(built.manifest).hex()
    sig = built.signature.hex()
    flip = lambda h, i: h[:i] + format(int(h[i], 16) ^ 1, "x") + h[i + 1:]  # noqa: E731
    other = fwb.public_bytes(Ed25519PrivateKey.generate()).hex()
    cases = [[p, m, s, True] for p, m, s in rfc] + [
        [pub, msg, sig, True],
        [pub, flip(msg, 70), sig, False],          # the manifest's digest changed
        [pub, msg, flip(sig, 3), False],           # R changed
        [pub, msg, flip(sig, 100), False],         # S changed
        [other, msg, sig, False],                  # another key
        [pub, msg, sig[:64] + "ff" * 32, False],   # S >= L
        [pub, msg, sig[:-2], False],               # short signature
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = run_mp(MP_TESTS / "test_ed25519.py", str(tmp_path / "cases.json"), heap="64wK")
    assert f"{len(cases) + 2} passed, 0 failed" in out


def test_the_loader_picks_the_bundle_for_every_boot_state(tmp_path):
    run_mp(MP_TESTS / "test_bootsel.py", str(tmp_path))


# ------------------------------------------------------------------ flashing, with a stand-in mpremote
FAKE_MPREMOTE = """#!{python}
import json, os, sys
log = os.environ["FAKE_MPREMOTE_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_MPREMOTE_FAIL") and sys.argv[-1].endswith(os.environ["FAKE_MPREMOTE_FAIL"]):
    print("mpremote: failed to access " + sys.argv[2], file=sys.stderr)
    sys.exit(1)
if sys.argv[3:5] == ["fs", "mkdir"] and os.environ.get("FAKE_MPREMOTE_EXISTS"):
    print("mpremote: mkdir: " + sys.argv[5] + ": EEXIST", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def board(tmp_path, monkeypatch):
    tool = tmp_path / "mpremote"
    tool.write_text(FAKE_MPREMOTE.format(python=sys.executable))
    tool.chmod(0o755)
    port = tmp_path / "ttyUSB0"
    port.write_text("")
    monkeypatch.setenv("SMARTROOM_MPREMOTE", str(tool))
    monkeypatch.setenv("FAKE_MPREMOTE_LOG", str(tmp_path / "calls.log"))
    return port


def calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]


def node_config(tmp_path: Path, **drop: object) -> Path:
    cfg = {"node_id": "bedside-a", "key_hex": "00" * 32, "controller": {"host": "10.0.0.2", "port": 7700},
           "wifi": {"ssid": "ward", "password": "x"}, "pinmap": "esp32s3-devkitc-1", "sim": {"speed": 5}}
    for k in drop:
        cfg.pop(k)
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg))
    return path


def test_flash_writes_loader_bundle_config_and_pinmap_then_resets(key, built, board, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MPREMOTE_EXISTS", "1")  # folders left from an earlier flash are fine
    pub = fwb.public_bytes(key)
    lines: list[str] = []
    copies = plan(built, node_config(tmp_path), ROOT / "hardware" / "pinmaps", pub, tmp_path)
    flash(str(board), built, copies, lines.append)
    made = calls(tmp_path)
    assert all(c[:2] == ["connect", str(board)] for c in made)
    mkdirs = [c[4] for c in made if c[2:4] == ["fs", "mkdir"]]
    assert set(mkdirs) == {":drivers", ":hal", ":srnode", ":pinmaps"}
    copied = {c[5]: c[4] for c in made if c[2:4] == ["fs", "cp"]}
    want = {":main.py", ":bootsel.py", ":manifest.json", ":manifest.sig", ":config.json",
            ":pinmaps/esp32s3-devkitc-1.json"} | {f":{f.path}" for f in built.files}
    assert set(copied) == want
    assert made[-1][2:] == ["reset"]
    assert Path(copied[":bootsel.py"]).read_bytes() == (FIRMWARE / "bootsel.py").read_bytes()
    cfg = json.loads(Path(copied[":config.json"]).read_text())
    assert cfg["ota"]["pub_hex"] == pub.hex() and "sim" not in cfg
    assert len(lines) == len(want) + 1 and lines[0].startswith(f"[1/{len(want)}] ") and "(100 %)" in lines[-2]
    assert built.sha256[:12] in lines[-1]


def test_flash_says_clearly_when_the_port_is_missing_or_mpremote_fails(key, built, board, tmp_path, monkeypatch):
    copies = plan(built, None, ROOT / "hardware" / "pinmaps", fwb.public_bytes(key), tmp_path)
    with pytest.raises(FlashError, match="no serial port /nonexistent/ttyUSB9: is the board plugged in"):
        flash("/nonexistent/ttyUSB9", built, copies, print)
    assert not (tmp_path / "calls.log").exists()  # nothing was tried
    monkeypatch.setenv("FAKE_MPREMOTE_FAIL", "runtime.mpy")
    with pytest.raises(FlashError, match="(?s)could not write srnode/runtime.mpy .*failed to access"):
        flash(str(board), built, copies, print)
    monkeypatch.delenv("FAKE_MPREMOTE_FAIL")
    monkeypatch.setenv("FAKE_MPREMOTE_EXISTS", "")
    monkeypatch.setenv("FAKE_MPREMOTE_FAIL", ":srnode")
    with pytest.raises(FlashError, match="could not make srnode"):
        flash(str(board), built, copies, print)


def test_flash_refuses_a_simulator_bundle_and_an_incomplete_config(key, board, tmp_path):
    sim = fwb.build_bundle(tmp_path / "sim", key, board="unix")
    with pytest.raises(FlashError, match="unix port"):
        flash(str(board), sim, [], print)
    with pytest.raises(FlashError, match="needs 'wifi'"):
        plan(sim, node_config(tmp_path, wifi=None), ROOT / "hardware" / "pinmaps", fwb.public_bytes(key), tmp_path)


def test_cli_build_is_reproducible_and_flash_reports_a_missing_port(tmp_path):
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    smartroom = [sys.executable, "-m", "controller.cli"]
    run = lambda *a: subprocess.run([*smartroom, "firmware", *a], env=env, capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    assert run("keygen", "--out", str(tmp_path / "k.pem")).returncode == 0
    first = run("build", "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "b1"))
    second = run("build", "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "b2"))
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].split()[1] == second.stdout.splitlines()[-1].split()[1]
    missing = run("flash", "--port", str(tmp_path / "ttyUSB0"), "--bundle", str(tmp_path / "b1"),
                  "--key", str(tmp_path / "k.pem"))
    assert missing.returncode == 2 and "no serial port" in missing.stderr


def test_the_update_benchmark_smoke_run(tmp_path):
    import re
    import subprocess
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "ota.py"), "--smoke"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert re.search(r"ed25519 verify in MicroPython \(64wK heap\): median \d+ ms, worst \d+ ms over 3", result.stdout)
    assert re.search(r"offer->staged median [\d.]+ s .* reboot->confirmed median [\d.]+ s .* over 1", result.stdout)
