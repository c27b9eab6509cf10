"""The room's uplink to the ward broker (MQTT): every stored event out, ward commands in (docs/ward.md)."""
