"""Node firmware bundles, flashing and updates over the node link (docs/firmware.md, docs/protocol.md §12)."""
