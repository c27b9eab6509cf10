# Unix-port entry: the real firmware on simulated hardware.
#
#     micropython -X heapsize=64wK firmware/sim_main.py NODE_CONFIG.json
#
# Exits 0 after logging `end` when the scenario's end_ms is reached; on a crash it logs
# `error ...` and exits 1 (a board would reset); exit 3 is a reset the firmware asked for (factory
# reset, forget). A config without "key_hex" is a node fresh from the box: it offers Improv on
# stdin/stdout (a pty) until provisioned, keeping what it is given in sim.state_dir (its flash).
# The firmware modules come from the bundle bootsel.py picks (docs/firmware.md, Updates), so
# they are imported only after it has chosen; a node that asks for a reset (an update) also exits 3.
import asyncio
import json
import sys

import bootsel


def _pinmap(cfg):
    # Pin maps live in hardware/pinmaps/ beside firmware/; the sim checks pin names against it.
    name = cfg.get("pinmap")
    if not name:
        return None
    here = sys.argv[0].rsplit("/", 1)[0] if "/" in sys.argv[0] else "."
    with open("%s/../hardware/pinmaps/%s.json" % (here, name)) as f:
        return json.load(f)


async def _end_at_scenario_end(hal, doc):
    from hal import scenario
    if await scenario.play(hal, doc):
        hal.log("end")
        sys.exit(0)


def _fail(hal, e):
    hal.log("error", "exc=%s msg=%s" % (type(e).__name__, str(e).replace(" ", "_")))
    sys.print_exception(e)
    sys.exit(1)


async def _main(hal, node, doc, path, fw):
    # A task that dies on an exception (not only those the node awaits) ends the node.
    asyncio.get_event_loop().set_exception_handler(lambda loop, ctx: _fail(hal, ctx["exception"]))
    if doc is not None:
        asyncio.create_task(_end_at_scenario_end(hal, doc))
    if node is None:  # fresh from the box: Improv on stdin/stdout until provisioned (docs/provisioning.md)
        from hal.simprov import provisioned_node
        node = await provisioned_node(hal, path, fw)
    await node.run()


def _build(path):
    # The config is only needed to build the node: it is not kept (its dicts cost heap).
    with open(path) as f:
        cfg = json.load(f)
    sim = cfg.get("sim", {})
    fw = bootsel.select(sim.get("state_dir", "."), lambda tag, text: print("@%d %s %s" % (0, tag, text)))  # the simulated flash is the state dir
    from hal import scenario
    from hal.sim import SimHal
    from srnode.runtime import Node
    hal = SimHal(cfg, _pinmap(cfg))
    doc = scenario.load(sim["scenario"]) if sim.get("scenario") else None
    return hal, (Node(cfg, hal, fw) if "key_hex" in cfg else None), doc, fw


def main(path):
    hal = None
    try:
        hal, node, doc, fw = _build(path)
        asyncio.run(_main(hal, node, doc, path, fw))
    except Exception as e:  # the node failed as a whole: say so on the log contract, exit 1
        if hal is None:
            print("@0 error exc=%s msg=%s" % (type(e).__name__, str(e).replace(" ", "_")))
            sys.exit(1)
        _fail(hal, e)


if len(sys.argv) != 2:
    print("usage: micropython -X heapsize=64wK sim_main.py NODE_CONFIG.json")
    sys.exit(2)
main(sys.argv[1])
