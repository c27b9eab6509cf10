# A simulated `bluetooth` module for the unix port (which has none): the subset of MicroPython's
# bluetooth.BLE a GATT server uses, plus what a test does as the central: connect, encrypt, write a
# characteristic, read what was notified. Found first on the path by the scripts in tests/mp/.


class UUID:
    def __init__(self, value):
        self.value = value if isinstance(value, int) else value.lower()

    def __eq__(self, other):
        return isinstance(other, UUID) and other.value == self.value

    def __repr__(self):
        return "UUID(%r)" % (self.value,)


class BLE:
    def __init__(self):
        self.on = False
        self.handler = None
        self.services = []      # [(service uuid, [(char uuid, flags, handle)])]
        self.values = {}        # handle -> bytes
        self.notified = []      # (conn, handle, bytes)
        self.adverts = []       # (interval_us, adv_data, resp_data)
        self.buffers = {}       # handle -> bytes a remote write may bring (MicroPython: 20 unless set)
        self._next = 1

    # --- what the firmware calls
    def active(self, on=None):
        if on is not None:
            self.on = bool(on)
        return self.on

    def irq(self, handler):
        self.handler = handler

    def gatts_register_services(self, services):
        out = []
        for svc_uuid, chars in services:
            handles = []
            entry = []
            for char_uuid, flags in chars:
                h = self._next
                self._next += 1
                handles.append(h)
                entry.append((char_uuid, flags, h))
                self.values[h] = b""
            self.services.append((svc_uuid, entry))
            out.append(tuple(handles))
        return tuple(out)

    def gatts_write(self, handle, data):
        self.values[handle] = bytes(data)

    def gatts_set_buffer(self, handle, size, append=False):
        self.buffers[handle] = size

    def gatts_read(self, handle):
        return self.values[handle]

    def gatts_notify(self, conn, handle, data=None):
        self.notified.append((conn, handle, bytes(self.values[handle] if data is None else data)))

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None):
        self.adverts.append((interval_us, adv_data, resp_data))

    # --- the central, driven by a test
    def handle_of(self, char_uuid):
        for _, chars in self.services:
            for uuid, flags, h in chars:
                if uuid == UUID(char_uuid):
                    return h
        raise KeyError(char_uuid)

    def flags_of(self, char_uuid):
        for _, chars in self.services:
            for uuid, flags, h in chars:
                if uuid == UUID(char_uuid):
                    return flags
        raise KeyError(char_uuid)

    def connect(self, conn):
        self.handler(1, (conn, 0, b"\x00" * 6))

    def disconnect(self, conn):
        self.handler(2, (conn, 0, b"\x00" * 6))

    def encrypt(self, conn):
        self.handler(28, (conn, True, False, False, 16))

    def write(self, conn, char_uuid, data):
        h = self.handle_of(char_uuid)
        self.values[h] = bytes(data)[:self.buffers.get(h, 20)]  # a longer write is cut, as on a board
        self.handler(3, (conn, h))
