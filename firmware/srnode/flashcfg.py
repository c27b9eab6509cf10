# What provisioning leaves on the node's flash: one JSON file, written atomically (littlefs rename;
# on the unix port the flash is a directory). Keys: wifi_ssid, wifi_password (Improv), node_id,
# key_hex, ctl_host, ctl_port, ctl_fp, ctl_cert (the vendor CERT and TRUST commands:
# docs/provisioning.md; the node link's TLS pin, srnode/tlspin.py), and
# "setup" (the configuration the controller pushed at adoption).
import json
import os

PROVISION_FILE = "/provision.json"
# ctl_cert too: without it a unix or rp2 build cannot pin the controller and would not start, so a
# flash without it offers Improv again instead
_NEEDED = ("wifi_ssid", "node_id", "key_hex", "ctl_host", "ctl_port", "ctl_fp", "ctl_cert")


class FlashConfig:
    """flash_dir: "" on a board (files at the root of littlefs), the sim's state directory on unix;
    restart: the board's reset, for whoever wipes this (factory reset, forget)."""

    def __init__(self, flash_dir="", restart=None):
        self._path = flash_dir + PROVISION_FILE
        self._dir = flash_dir
        self.restart = restart

    def load(self):
        try:
            with open(self._path) as f:
                doc = json.load(f)
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def update(self, fields):
        doc = self.load()
        for k in fields:
            doc[k] = fields[k]
        self._write(doc)
        return doc

    def _write(self, doc):
        path = ""
        for name in self._dir.split("/"):  # mkdir -p (the sim's state dir may not exist yet)
            path += name + "/"
            if name:
                try:
                    os.mkdir(path)
                except OSError:
                    pass
        with open(self._path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.rename(self._path + ".tmp", self._path)  # old or new, never half

    def wipe(self):
        try:
            os.remove(self._path)
        except OSError:
            pass  # nothing stored: already factory state


def provisioned(doc):
    for k in _NEEDED:
        if not doc.get(k):
            return False
    return True


def node_config(base, doc):
    """The factory config (/config.json: hardware, pin map, inputs) with the provisioned trust and
    the pushed setup over it: what runtime.Node takes."""
    cfg = {}
    for k in base:
        cfg[k] = base[k]
    cfg["node_id"] = doc["node_id"]
    cfg["key_hex"] = doc["key_hex"]
    cfg["controller"] = {"host": doc["ctl_host"], "port": doc["ctl_port"]}
    for k in ("ctl_host", "ctl_port", "ctl_fp", "ctl_cert"):
        cfg[k] = doc.get(k)
    cfg["wifi"] = {"ssid": doc["wifi_ssid"], "password": doc.get("wifi_password", "")}
    setup = doc.get("setup")
    if setup:
        cfg["setup"] = setup
        for k in ("hb_ms", "reading_ms"):
            if k in setup:
                cfg[k] = setup[k]
    return cfg
