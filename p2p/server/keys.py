"""Who is calling: bearer keys and the owners they belong to.

A keys file (or the `P2P_API_KEYS` environment variable) has one key per line, `OWNER KEY`, blank lines and `#`
comments ignored; the owner `*` makes the key an admin key. `P2P_API_KEY`, the single key of earlier versions, keeps
working as an admin key. An owner's key reads, replaces, deletes and chats as only the stored users that owner put;
an admin's key, every user. With no key at all the server is a loopback-only server with one owner, the local user,
who is its admin.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

ADMIN = "*"
MIN_KEY_CHARS = 16


@dataclass(frozen=True)
class Caller:
    owner: str  # "" for the keyless server's one local user
    admin: bool


@dataclass(frozen=True)
class Keys:
    by_key: dict[str, Caller] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller an `Authorization` header names, or None. Every key is compared, each in constant time, so the
        answer's timing says nothing of which key (or how much of one) matched."""
        if not self.by_key:
            return Caller("", admin=True)
        scheme, _, given = (authorization or "").partition(" ")
        given_bytes = given.strip().encode()
        found = None
        for key, caller in self.by_key.items():
            if hmac.compare_digest(given_bytes, key.encode()) and scheme.lower() == "bearer":
                found = caller
        return found


def parse_keys(text: str, source: str) -> dict[str, Caller]:
    """`OWNER KEY` lines -> key: caller. A bad line is a ValueError naming `source` and the line."""
    keys: dict[str, Caller] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source}:{number}"
        if len(parts) != 2:
            raise ValueError(f"{where}: expected `OWNER KEY` (two words), got {len(parts)}")
        owner, key = parts
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"{where}: key: at least {MIN_KEY_CHARS} characters (e.g. `openssl rand -hex 16`)")
        if key in keys:
            raise ValueError(f"{where}: key: the same key is given twice")
        keys[key] = Caller(owner, admin=owner == ADMIN)
    return keys


def load_keys(admin_key: str | None = None, keys_text: str | None = None, source: str = "P2P_API_KEYS") -> Keys:
    """The server's keys: `keys_text` (a keys file's or the environment variable's text), plus `admin_key`."""
    by_key = parse_keys(keys_text, source) if keys_text else {}
    if admin_key:
        by_key[admin_key] = Caller(ADMIN, admin=True)
    return Keys(by_key)
