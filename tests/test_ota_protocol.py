"""Protocol v2's firmware-update messages (docs/protocol.md §12), controller side: parsed or refused."""

from __future__ import annotations

import pytest

from controller.link import protocol as p
from controller.model import OtaGet, OtaReport

BASE = {"v": 2, "n": "bedside-a", "b": 3, "s": 9}
MH = "ab" * 32


def test_ota_get_and_report_parse_to_typed_messages():
    assert p.parse_node_message({**BASE, "t": "ota_get", "mh": MH, "f": 0, "o": 0}) == OtaGet("bedside-a", 3, 9, MH, 0, 0)
    assert p.parse_node_message({**BASE, "t": "ota_get", "mh": MH, "f": 27, "o": 2**31 - 1}).offset == 2**31 - 1
    for st in p.OTA_STATUSES:
        msg = p.parse_node_message({**BASE, "t": "ota", "st": st, "ver": "0.2.0"})
        assert msg == OtaReport("bedside-a", 3, 9, st, "0.2.0", None, None)
    full = p.parse_node_message({**BASE, "t": "ota", "st": "refused", "ver": "0.2.0", "why": "bad_hash", "mh": MH})
    assert (full.reason, full.bundle) == ("bad_hash", MH)


@pytest.mark.parametrize("fields, detail", [
    ({"t": "ota_get", "mh": MH, "f": -1, "o": 0}, "'f'=-1 out of range"),
    ({"t": "ota_get", "mh": MH, "f": 0, "o": -1}, "'o'=-1 out of range"),
    ({"t": "ota_get", "mh": MH[:-1], "f": 0, "o": 0}, "mh must be 64"),
    ({"t": "ota_get", "mh": MH.upper(), "f": 0, "o": 0}, "mh must be 64"),
    ({"t": "ota_get", "f": 0, "o": 0}, "missing field 'mh'"),
    ({"t": "ota_get", "mh": MH, "f": True, "o": 0}, "'f' must be an integer"),
    ({"t": "ota", "st": "done", "ver": "0.2.0"}, "ota status 'done'"),
    ({"t": "ota", "st": "refused"}, "missing field 'ver'"),
    ({"t": "ota", "st": "refused", "ver": "0.2.0", "why": 3}, "'why' must be a string"),
    ({"t": "ota", "st": "refused", "ver": "0.2.0", "mh": 1}, "'mh' must be a string"),
])
def test_malformed_ota_messages_are_bad_messages(fields, detail):
    with pytest.raises(p.ProtocolError) as err:
        p.parse_node_message({**BASE, **fields})
    assert err.value.reason == "bad_message" and detail in err.value.detail


def test_an_ota_data_chunk_fits_a_frame():
    import base64
    key = bytes(32)
    cmd = p.command(2**31 - 1, 2**31 - 1, "ota_data", mh=MH, f=2**31 - 1, o=2**31 - 1,
                    d=base64.b64encode(bytes(p.OTA_CHUNK_BYTES)).decode())
    assert len(p.encode_frame(key, cmd)) - 2 <= p.MAX_FRAME_BYTES
