"""The room and the hospital's systems: IHE PCD alarm reports to an alarm manager (HL7 v2 over MLLP),
admissions in (HL7 ADT), signed webhooks out; FHIR reads are served by room_api from ``fhir.py``.

An adapter of the room like the node gateway and the API: it reads the room's stored events by
cursor and enters what the hospital tells it through ``RoomController`` (docs/integration.md).
"""
