"""Who may talk to the room: API tokens and the audit log, TLS certificates, DNS-SD discovery."""
