"""The room: its configuration, its state kept as a fold over the event log, the nurse-call rules
and the response-time reports. Knows nothing of the network, the node link or HTTP.

``state.Room`` composes the rules by concern: ``calls`` (call types, lifecycle, escalation, outputs),
``presence`` (staff, areas, beds, I'm OK, bathroom dwell), ``environment`` and ``supervision``.
"""

from .calls import (CALL_INPUTS, CALL_TYPES, CONDITION, HOW_API, HOW_IN_ROOM_CANCEL, HOW_PATIENT_CANCEL,
                    HOW_PATIENT_OK, HOW_PRESENCE, HOW_RESOLVED, IN_ROOM, ROUTINE, TIERS, Call,
                    CallAlreadyAcknowledged, CallNotFound, CallType, CancelAtOrigin, ClearsItself, RoomError,
                    RoomOutputs, UnknownBed)
from .environment import EnvState
from .presence import AREA_INPUTS
from .state import Room
from .supervision import BATTERY_MEASURE, FAULT_CORD_REMOVED, PLAUSIBLE, NodeStatus

__all__ = [
    "AREA_INPUTS", "BATTERY_MEASURE", "CALL_INPUTS", "CALL_TYPES", "CONDITION", "FAULT_CORD_REMOVED",
    "HOW_API", "HOW_IN_ROOM_CANCEL", "HOW_PATIENT_CANCEL", "HOW_PATIENT_OK", "HOW_PRESENCE", "HOW_RESOLVED",
    "IN_ROOM", "PLAUSIBLE", "ROUTINE", "TIERS", "Call", "CallAlreadyAcknowledged", "CallNotFound", "CallType",
    "CancelAtOrigin", "ClearsItself", "EnvState", "NodeStatus", "Room", "RoomError", "RoomOutputs", "UnknownBed",
]
