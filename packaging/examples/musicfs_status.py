#!/usr/bin/env python3
"""Reads a running MusicFS engine's status over its control socket with
pycapnp (PyPI: pip install pycapnp), from the schema alone: an example of
the control plane used beyond the musicfs binary.

    musicfs_status.py STATE_DIR           # e.g. /var/lib/musicfs/mnt-music
    musicfs_status.py STATE_DIR --events  # and the events the engine keeps

Prints one JSON object. The control socket is owner-only: run it as the
user the mount runs as.
"""
import argparse
import asyncio
import json
import os
import sys

import capnp  # pycapnp

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_PATHS = [
    os.path.join(HERE, "..", "..", "schema", "musicfs.capnp"),  # the source tree
    "/usr/share/musicfs/musicfs.capnp",  # the package
]


def load_schema():
    for path in SCHEMA_PATHS:
        if os.path.exists(path):
            return capnp.load(path)
    sys.exit("musicfs_status: cannot find musicfs.capnp (looked in %s)" % ", ".join(SCHEMA_PATHS))


async def status(schema, state_dir, events):
    sock = os.path.join(state_dir, "control.sock")
    stream = await capnp.AsyncIoStream.create_unix_connection(sock)
    client = capnp.TwoPartyClient(stream)
    gate = client.bootstrap().cast_as(schema.EngineGate)
    hello = await gate.hello(
        client={
            "minProtocol": schema.minControlProtocolVersion,
            "maxProtocol": schema.controlProtocolVersion,
            "name": "musicfs_status.py (pycapnp)",
        }
    )
    engine = hello.engine
    st = (await engine.status()).status
    out = {
        "server": hello.server.name,
        "engine_version": st.engineVersion,
        "pid": st.pid,
        "files": st.files,
        "nodes": st.nodes,
        "bytes": st.bytes,
        "scan_complete": st.scanComplete,
        "connected_shims": st.connectedShims,
        "origins": [{"path": o.path, "reachable": o.reachable, "local": o.local} for o in st.origins],
        "counters": {c.name: c.value for c in st.counters},
    }
    if events:
        kept = (await engine.events(after=0)).events
        out["events"] = [{"seq": e.seq, "kind": e.kind, "message": e.message} for e in kept]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("state_dir")
    p.add_argument("--events", action="store_true")
    args = p.parse_args()
    schema = load_schema()
    out = asyncio.run(capnp.run(status(schema, args.state_dir, args.events)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
