# The real Node (srnode/runtime.py) on virtual time with the link down: the reassurance light shows
# "undelivered" from the press until the ack, then what the controller commanded; the event is on
# flash before it is sent and comes back after a restart as (its boot, its e); a journal that
# cannot keep an event says so with a fault event, and the call is still queued.
# Usage: micropython test_node_journal.py <empty directory>
import asyncio
import sys

from linkdown import LinkDownHal
from mpcheck import check, done
from srnode.equeue import BOOT, EV, KIND, SRC, VAL
from srnode.journal import Journal
from srnode.runtime import Node

DIR = sys.argv[1]
CFG = {"node_id": "bedside-a", "key_hex": "00" * 32, "link_plain": True, "controller": {"host": "127.0.0.1", "port": 9},
       "inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"}}


class Hal(LinkDownHal):
    """No controller: every connect fails at once."""

    def led_changes(self, since_ms):
        return [t for t, tag, text in self.logged if tag == "pin" and "name=led" in text and t >= since_ms]


def gaps(times):
    return [times[i + 1] - times[i] for i in range(len(times) - 1)]


async def press(hal):
    hal.pins["call"].drive(0)
    await hal.advance(60)
    hal.pins["call"].drive(1)
    await hal.advance(40)


async def light_while_undelivered():
    hal = Hal(DIR)
    node = Node(CFG, hal)
    led = node.indicator
    asyncio.create_task(node.run())
    await hal.advance(100)
    check("no call: the light is off", led.pattern == "off" and hal.pins["led"].value() == 0)
    await press(hal)
    at = hal.now
    queued = [(e[KIND], e[SRC], e[VAL]) for e in node.queue.items]
    check("a press queues a call event", queued == [("button", "call", 1)], queued)
    check("the press shows 'undelivered'", led.pattern == "undelivered")
    on_flash = Journal(hal.flash_path("journal")).load()
    check("the event is on flash before any ack", [(e[BOOT], e[EV]) for e in on_flash] == [(1, 1)], on_flash)
    await hal.advance(2000)
    check("the link stayed down meanwhile", hal.connects >= 2 and not node.link.up)
    blinks = gaps(hal.led_changes(at))
    check("fast blink, 200 ms on / 200 ms off, all the while",
          len(blinks) >= 9 and all(g == 200 for g in blinks), blinks)
    # a command that arrives while the call is undelivered is kept for after the ack
    node.on_cmd({"c": "indicator", "p": "received"})
    check("a command does not hide 'undelivered'", led.pattern == "undelivered")
    await hal.advance(400)
    check("acking an unknown event changes nothing", not node.acked(7, None) and led.pattern == "undelivered")
    check("an ack naming another boot changes nothing", not node.acked(1, 5) and led.pattern == "undelivered")
    check("the ack frees the event", node.acked(1, None) and len(node.queue) == 0)
    acked_at = hal.now
    check("after the ack: the commanded 'received'", led.pattern == "received")
    await hal.advance(3000)
    slow = gaps(hal.led_changes(acked_at + 1))
    check("slow blink, 500 ms on / 500 ms off", len(slow) >= 4 and all(g == 500 for g in slow), slow)
    check("the ack is on flash: nothing held", Journal(hal.flash_path("journal")).load() == [])
    node.on_cmd({"c": "indicator", "p": "acknowledged"})
    check("then the commanded 'acknowledged'", led.pattern == "acknowledged" and hal.pins["led"].value() == 1)
    node.on_cmd({"c": "indicator", "p": "undelivered"})
    check("'undelivered' is not the controller's to command",
          led.pattern == "acknowledged" and hal.logged[-1][1:] == ("reject", "reason=bad_command c=indicator"))
    # a second press, and a restart before its ack
    await press(hal)
    check("a new press shows 'undelivered' over 'acknowledged'", led.pattern == "undelivered")
    return node


def restart(first):
    hal = Hal(DIR)
    node = Node(CFG, hal)  # what boots after a power loss: the same flash
    check("the boot counter moved on", node.boot == first.boot + 1)
    held = [(e[BOOT], e[EV], e[KIND], e[SRC]) for e in node.queue.items]
    check("the unacked press is queued again as (its boot, its e)", held == [(1, 2, "button", "call")], held)
    check("and shown 'undelivered' from the start", node.indicator.pattern == "undelivered")
    msg = node.event_msg(node.queue.items[0], 1)
    check("sent in this boot's frame with ob = its boot", (msg["b"], msg["e"], msg["ob"]) == (2, 2, 1), msg)
    node.emit("button", "call", 1, 5)
    fresh = node.event_msg(node.queue.items[1], 2)
    check("an event of this boot carries no ob", "ob" not in fresh and (fresh["b"], fresh["e"]) == (2, 1))
    check("an ack without ob is for this boot's e", node.acked(2, None) is False and len(node.queue) == 2)
    check("the ack naming ob frees the kept one", node.acked(2, 1) and [e[BOOT] for e in node.queue.items] == [2])
    check("still undelivered: this boot's press waits", node.indicator.pattern == "undelivered")
    check("its ack", node.acked(1, None) and node.indicator.pattern == "off")
    hal2 = Hal(DIR)
    again = Node(CFG, hal2)
    check("a third boot resends nothing", len(again.queue) == 0 and again.boot == 3)


def state_lost():
    import os
    os.mkdir(DIR + "/lost")
    hal = Hal(DIR + "/lost")
    first = Node(CFG, hal)
    first.boot = 7  # boots 1..7 happened; then the state file is lost (a reflash), the journal kept
    first.emit("button", "call", 1, 5)
    os.remove(DIR + "/lost/state.json")
    node = Node(CFG, Hal(DIR + "/lost"))
    check("a lost boot counter restarts above the journal's boots", node.boot == 8, node.boot)
    check("so the kept event is sent as an earlier boot's", node.event_msg(node.queue.items[0], 1)["ob"] == 7)


class WatchedHal(Hal):
    """Reads the journal back whenever the node logs an event line."""

    def __init__(self, d):
        Hal.__init__(self, d)
        self.on_flash_at_line = []

    def log(self, tag, text=""):
        if tag == "event":
            self.on_flash_at_line.append([e[EV] for e in Journal(self.flash_path("journal")).load()])
        Hal.log(self, tag, text)


def logged_once_on_flash():
    # A test (or an operator) that sees the event line and then cuts the power must find the event
    # held at the next boot: the line is only logged once the journal has the event.
    import os
    os.mkdir(DIR + "/watched")
    hal = WatchedHal(DIR + "/watched")
    node = Node(CFG, hal)
    node.emit("button", "call", 1, 5)
    node.emit("button", "call", 0, 9)
    check("each event line comes after its record is on flash", hal.on_flash_at_line == [[1], [1, 2]],
          hal.on_flash_at_line)


def full_journal():
    hal = Hal(DIR + "/full")
    import os
    os.mkdir(DIR + "/full")
    node = Node(CFG, hal)
    node.journal.limit = 20  # smaller than one event record
    node.emit("button", "call", 1, 5)
    kinds = [(e[KIND], e[SRC], e[VAL]) for e in node.queue.items]
    check("a call the journal cannot keep is still queued, with a fault event after it",
          kinds == [("button", "call", 1), ("fault", "journal", 5)], kinds)
    lines = [(t, x.split(" ")[0]) for _, t, x in hal.logged if t in ("event", "fault")]
    check("logged in that order: the call, the fault, its event",
          lines == [("event", "e=1"), ("fault", "src=journal"), ("event", "e=2")], lines)
    node.emit("button", "call", 1, 6)
    check("one fault event while it stays full", [e[KIND] for e in node.queue.items].count("fault") == 1)
    node.journal.limit = 4096
    check("ack", node.acked(1, None))
    kinds = [(e[KIND], e[SRC], e[VAL]) for e in node.queue.items]
    check("room again: the fault clears (a val 0 event)", kinds[-1] == ("fault", "journal", 0), kinds)
    on_flash = [(e[KIND], e[VAL]) for e in Journal(hal.flash_path("journal")).load()]
    check("and everything queued is on flash now", on_flash == [(e[KIND], e[VAL]) for e in node.queue.items], on_flash)


async def main():
    first = await light_while_undelivered()
    restart(first)
    state_lost()
    logged_once_on_flash()
    full_journal()
    done()


asyncio.run(main())
