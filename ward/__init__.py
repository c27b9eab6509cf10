"""The ward console: every room of a unit on one nurse station and on the nurses' phones, over MQTT
(docs/ward.md). Its own service: it reads the rooms' published events and sends them commands; the
rooms never import it."""
