"""The node link: protocol v2 framing and messages, the controller's node gateway, a CPython node client.

A node's frame enters here; what leaves is a typed message (``controller.model``) handed to the
room service. Specification: docs/protocol.md.
"""
