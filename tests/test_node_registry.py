"""The node registry (controller/store/nodes.py): states, limits, audit, and what survives a reopen."""

from __future__ import annotations

import pytest

from controller.store.nodes import NodeRegistry, RegistryError

KEY = bytes(range(32))


@pytest.fixture
def reg(tmp_path):
    r = NodeRegistry(tmp_path / "room.db")
    yield r
    r.close()


def test_states_from_provisioned_to_decommissioned_are_audited(reg, tmp_path):
    reg.enrol("bed1-call", KEY, "sam", 10, hw="esp32s3", fw="0.1.0")
    assert reg.get("bed1-call").state == "provisioned"
    assert reg.seen("bed1-call", "esp32s3", "0.1.0", ("button",), 20).state == "waiting"
    assert reg.seen("bed1-call", "esp32s3", "0.1.0", ("button",), 21).state == "waiting"  # no change, no row
    rec = reg.assign("bed1-call", "A", "bedside", {"call": "patient_call"}, "sam", 30)
    assert (rec.state, rec.bed, rec.adopted_by, rec.adopted_ms) == ("adopted", "A", "sam", 30)
    assert reg.decommission("bed1-call", "lee", 40).state == "decommissioned"
    with pytest.raises(RegistryError) as exc:
        reg.decommission("bed1-call", "lee", 41)
    assert exc.value.status == 409
    assert [(a.action, a.actor) for a in reversed(reg.audit("bed1-call"))] == [
        ("provision", "sam"), ("waiting", "node bed1-call"), ("assign", "sam"), ("decommission", "lee")]
    reopened = NodeRegistry(tmp_path / "room.db")
    assert reopened.get("bed1-call").state == "decommissioned" and reopened.get("bed1-call").key == KEY
    reopened.close()


@pytest.mark.parametrize("node,ok", [("a" * 32, True), ("a" * 33, False), ("", False), ("Bed1", False),
                                     ("bed_1", False), ("bed-1", True)])
def test_node_ids(reg, node, ok):
    if ok:
        assert reg.enrol(node, KEY, "sam", 1).node_id == node
    else:
        with pytest.raises(RegistryError):
            reg.enrol(node, KEY, "sam", 1)


@pytest.mark.parametrize("size,ok", [(31, False), (32, True), (33, False)])
def test_key_is_32_bytes(reg, size, ok):
    if ok:
        assert reg.enrol("n", bytes(size), "sam", 1).key == bytes(size)
    else:
        with pytest.raises(RegistryError):
            reg.enrol("n", bytes(size), "sam", 1)


def test_reprovisioning_keeps_bed_and_role_and_readopts(reg):
    reg.enrol("n", KEY, "sam", 1)
    reg.seen("n", "hw", "fw", (), 2)
    reg.assign("n", "A", "bathroom", {"cord": "bath_emergency"}, "sam", 3)
    new_key = bytes(32)
    rec = reg.enrol("n", new_key, "sam", 4)  # a factory reset, then provisioned again
    assert (rec.state, rec.key, rec.bed, rec.role) == ("provisioned", new_key, "A", "bathroom")
    assert reg.seen("n", "hw", "fw", (), 5).state == "adopted"


def test_rotation_keeps_the_old_key_until_finished(reg):
    reg.enrol("n", KEY, "sam", 1)
    with pytest.raises(RegistryError):
        reg.start_rotation("n", bytes(32), "sam", 2)  # not connected yet: nothing to rotate with
    reg.seen("n", "hw", "fw", (), 2)
    rec = reg.start_rotation("n", bytes(32), "sam", 3)
    assert (rec.key, rec.pending_key) == (KEY, bytes(32))
    rec = reg.finish_rotation("n", 4)
    assert (rec.key, rec.pending_key) == (bytes(32), None)
    assert reg.finish_rotation("n", 5).key == bytes(32)  # nothing pending: no change


def test_replace_needs_an_assigned_old_node_and_a_fresh_new_one(reg):
    for n in ("old", "new", "other"):
        reg.enrol(n, KEY, "sam", 1)
    with pytest.raises(RegistryError, match="no bed and role"):
        reg.replace("old", "new", "sam", 2)
    reg.seen("old", "hw", "fw", (), 2)
    reg.assign("old", "B", "bedside", {"call": "patient_call"}, "sam", 3)
    reg.seen("other", "hw", "fw", (), 3)
    reg.assign("other", "A", "bedside", {}, "sam", 4)
    with pytest.raises(RegistryError) as exc:
        reg.replace("old", "other", "sam", 5)  # already adopted elsewhere
    assert exc.value.status == 409
    with pytest.raises(RegistryError) as exc:
        reg.replace("old", "nobody", "sam", 5)
    assert exc.value.status == 404
    rec = reg.replace("old", "new", "sam", 6)
    assert (rec.bed, rec.role, rec.inputs, rec.state) == ("B", "bedside", {"call": "patient_call"}, "provisioned")
    assert reg.get("old").state == "decommissioned"
    assert reg.seen("new", "hw", "fw", (), 7).state == "adopted"


def test_to_json_never_holds_the_key(reg):
    reg.enrol("n", KEY, "sam", 1)
    assert KEY.hex() not in str(reg.get("n").to_json())
