# Device drivers. Sensor fault codes (docs/protocol.md section 2, event kind `fault`): a driver
# raises SensorFault(code); the runtime turns it into a `fault` event. Drivers never crash the node.
from micropython import const

NOT_ANSWERING = const(1)  # no ACK on the bus, no answer on the UART, wrong chip id
BAD_CRC = const(2)        # answer arrived but its CRC / checksum / framing is wrong
IMPLAUSIBLE = const(3)    # well-formed answer with a value outside what the room can produce


class SensorFault(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code
