"""Who may connect: devices, apps, users and login sessions of the reference server.

Keys are compared in constant time (`hmac.compare_digest`), and a lookup of an unknown
device still performs one comparison so that timing does not reveal which ids exist.
No key, secret, password or token ever appears in a repr or a log line.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("iotcommute.server")

#: The device from the README quick start; always present in the demo registry.
README_DEVICE_KEY = "L1SEIUDU1MC996W48L8Q"
README_DEVICE_ID = "FY6ODPIVU522SY1"
DEMO_USER = "demo-user"
DEMO_PASSWORD = "demo-pass"
DEMO_API_KEY = "demo-app"
DEMO_API_SECRET = "demo-secret"

ROLES = ("device", "client")


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class Device:
    id: str
    key: str = field(repr=False)
    owner: str
    name: str = ""
    #: roles this device's credentials may connect with (403 otherwise)
    roles: tuple[str, ...] = ROLES


@dataclass(frozen=True)
class App:
    api_key: str
    api_secret: str = field(repr=False)
    user_id: str


@dataclass(frozen=True)
class User:
    user_id: str
    password: str = field(repr=False)
    name: str = ""


@dataclass(frozen=True)
class Session:
    access_token: str = field(repr=False)
    user_id: str
    api_key: str
    expires_at: float


@dataclass(frozen=True)
class RequestToken:
    request_token: str = field(repr=False)
    user_id: str
    api_key: str
    expires_at: float


class SessionStore:
    """In-memory access tokens (REST login flow) and single-use request tokens."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._requests: dict[str, RequestToken] = {}

    def create(self, user_id: str, api_key: str, ttl: float = 8 * 3600.0) -> Session:
        s = Session(secrets.token_urlsafe(24), user_id, api_key, self._clock() + ttl)
        self._sessions[s.access_token] = s
        return s

    def get(self, access_token: str) -> Session | None:
        """The live session for a token, or None (unknown or expired)."""
        s = self._sessions.get(access_token)
        if s is None:
            return None
        if s.expires_at <= self._clock():
            del self._sessions[access_token]
            return None
        return s

    def delete(self, access_token: str) -> bool:
        return self._sessions.pop(access_token, None) is not None

    def remaining(self, access_token: str) -> float | None:
        """Seconds until this session expires (None if it is unknown or expired)."""
        s = self.get(access_token)
        return None if s is None else s.expires_at - self._clock()

    def create_request_token(self, user_id: str, api_key: str, ttl: float = 300.0) -> RequestToken:
        r = RequestToken(secrets.token_urlsafe(16), user_id, api_key, self._clock() + ttl)
        self._requests[r.request_token] = r
        return r

    def redeem_request_token(self, request_token: str) -> RequestToken | None:
        """Single use: the token is removed whether or not it was still valid."""
        r = self._requests.pop(request_token, None)
        if r is None or r.expires_at <= self._clock():
            return None
        return r


class Registry:
    """Devices, apps and users, looked up by id; constant-time credential checks."""

    def __init__(
        self,
        devices: list[Device] | None = None,
        apps: list[App] | None = None,
        users: list[User] | None = None,
    ) -> None:
        self._devices: dict[str, Device] = {}
        self._apps: dict[str, App] = {}
        self._users: dict[str, User] = {}
        self._fleets: dict[str, list[Device]] = {}
        self.sessions = SessionStore()
        for d in devices or []:
            self.add_device(d)
        for a in apps or []:
            self._apps[a.api_key] = a
        for u in users or []:
            self._users[u.user_id] = u

    def add_device(self, d: Device) -> None:
        old = self._devices.get(d.id)
        if old is not None:
            self._fleets[old.owner].remove(old)
        self._devices[d.id] = d
        self._fleets.setdefault(d.owner, []).append(d)

    def device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def check_device(self, device_id: str, key: str) -> Device | None:
        d = self._devices.get(device_id)
        # Compare even when the id is unknown so timing does not leak which ids exist.
        ok = _eq(d.key if d is not None else "\x00" * 20, key)
        return d if (d is not None and ok) else None

    def app(self, api_key: str) -> App | None:
        return self._apps.get(api_key)

    def check_app(self, api_key: str, api_secret: str) -> App | None:
        a = self._apps.get(api_key)
        ok = _eq(a.api_secret if a is not None else "\x00" * 16, api_secret)
        return a if (a is not None and ok) else None

    def user(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    def check_user(self, user_id: str, password: str) -> User | None:
        u = self._users.get(user_id)
        ok = _eq(u.password if u is not None else "\x00" * 16, password)
        return u if (u is not None and ok) else None

    def devices_of(self, user_id: str) -> list[Device]:
        return list(self._fleets.get(user_id, ()))

    def fleet_ids(self, user_id: str) -> frozenset[str]:
        return frozenset(d.id for d in self._fleets.get(user_id, ()))

    def __len__(self) -> int:
        return len(self._devices)

    def __repr__(self) -> str:
        return (
            f"Registry(devices={len(self._devices)}, apps={len(self._apps)}, "
            f"users={len(self._users)})"
        )


def sim_device_id(i: int) -> str:
    return f"sim-{i:04d}"


def sim_device_key(i: int) -> str:
    """Deterministic demo key, so `iotcommute demo` and tests can connect as a simulated device."""
    return f"SIMKEY{i:014d}"


def demo_registry(n_sim: int = 100) -> Registry:
    """The built-in registry: the README device, the demo app/user and sim-0001..sim-NNNN."""
    devices = [Device(README_DEVICE_ID, README_DEVICE_KEY, DEMO_USER, "README device")]
    devices += [
        Device(sim_device_id(i), sim_device_key(i), DEMO_USER, f"simulated {i}")
        for i in range(1, n_sim + 1)
    ]
    # A second user with one device, so tests can check that fleets are isolated.
    devices.append(Device("other-0001", "OTHERKEY000000000001", "other-user", "other fleet"))
    # A device whose credentials may only connect as a device (role check -> 403).
    devices.append(
        Device("sensor-only-1", "SENSORONLY0000000001", DEMO_USER, "device role only", ("device",))
    )
    apps = [
        App(DEMO_API_KEY, DEMO_API_SECRET, DEMO_USER),
        App("other-app", "other-secret", "other-user"),
    ]
    users = [User(DEMO_USER, DEMO_PASSWORD, "Demo User"), User("other-user", "other-pass", "Other")]
    return Registry(devices, apps, users)


def ensure_sim_devices(reg: Registry, n: int) -> None:
    """Make sure sim-0001..sim-n exist (for --simulate N with a registry file)."""
    for i in range(1, n + 1):
        if reg.device(sim_device_id(i)) is None:
            reg.add_device(Device(sim_device_id(i), sim_device_key(i), DEMO_USER, f"simulated {i}"))


def load_registry(path: str | Path) -> Registry:
    """Read a JSON registry: {"users": [...], "apps": [...], "devices": [...]}.

    users: {"user_id", "password", "name"?}; apps: {"api_key", "api_secret", "user_id"};
    devices: {"id", "key", "owner", "name"?, "roles"?: ["device", "client"]}.
    """
    raw = json.loads(Path(path).read_text("utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("registry file must hold a JSON object")
    devices = [
        Device(
            str(d["id"]),
            str(d["key"]),
            str(d["owner"]),
            str(d.get("name", "")),
            tuple(d.get("roles", ROLES)),
        )
        for d in raw.get("devices", [])
    ]
    apps = [
        App(str(a["api_key"]), str(a["api_secret"]), str(a["user_id"])) for a in raw.get("apps", [])
    ]
    users = [
        User(str(u["user_id"]), str(u["password"]), str(u.get("name", "")))
        for u in raw.get("users", [])
    ]
    reg = Registry(devices, apps, users)
    log.info("registry loaded: %r", reg)
    return reg
