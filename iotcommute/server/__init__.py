"""The reference IOT commute server (`iotcommute serve`): protocol v1, see docs/protocol.md.

from iotcommute.server import ServerThread
with ServerThread(port=0) as srv:        # demo registry, in-memory log
    print(srv.url, srv.hub.log.last_position)
"""

from __future__ import annotations

from .app import ReferenceServer, ServerConfig, ServerThread
from .hub import Hub
from .log import Log, Record
from .registry import (
    App,
    Device,
    Registry,
    RequestToken,
    Session,
    SessionStore,
    User,
    demo_registry,
    load_registry,
)

__all__ = [
    "App",
    "Device",
    "Hub",
    "Log",
    "Record",
    "ReferenceServer",
    "Registry",
    "RequestToken",
    "ServerConfig",
    "ServerThread",
    "Session",
    "SessionStore",
    "User",
    "demo_registry",
    "load_registry",
]
