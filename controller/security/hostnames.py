"""The mDNS names a room controller goes by (controller/security/discovery.py announces them; a
self-signed certificate is made for them). Apart from discovery so that naming a certificate does not
load zeroconf (start-up time, README "Performance")."""

from __future__ import annotations

import re

LABEL_MAX_BYTES = 63  # DNS label limit, for the instance name and the host name


def host_label(room_id: str) -> str:
    """The mDNS host name the controller announces for its addresses: ``smartroom-<room>.local``."""
    slug = re.sub(r"[^a-z0-9-]+", "-", room_id.lower()).strip("-")
    return f"smartroom-{slug}"[:LABEL_MAX_BYTES].rstrip("-") + ".local"
