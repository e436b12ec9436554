"""API keys: the constant-time check of a given key against the plain keys and the salted hashes of the
settings, the hash format (``sha256$<salt>$<hex>``: HMAC-SHA256 of the key with the salt as HMAC key;
``whitebox hash-key`` prints one), and the key's identity in Redis (a hash, never the key)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

SCHEME = "sha256"


def hash_key(key: str, salt: str | None = None) -> str:
    """``sha256$<salt>$<hex>`` of ``key``; a fresh random salt unless given."""
    salt = salt or secrets.token_hex(16)
    if "$" in salt:
        raise ValueError("a salt cannot contain '$'")
    return f"{SCHEME}${salt}${_digest(salt, key)}"


def new_key() -> str:
    """A new random API key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def parse_hash(stored: str) -> tuple[str, str]:
    """(salt, hex digest) of a stored hash; ValueError naming the expected format otherwise."""
    parts = stored.split("$")
    if len(parts) != 3 or parts[0] != SCHEME or not parts[1] or len(parts[2]) != 64:
        raise ValueError(f"API key hash {stored[:12]!r}...: expected {SCHEME}$<salt>$<64 hex digits>")
    return parts[1], parts[2]


def _digest(salt: str, key: str) -> str:
    return hmac.new(salt.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_is_valid(given: str, keys: Iterable[str], hashes: Iterable[str] = ()) -> bool:
    """``given`` equals one of ``keys`` or matches one of ``hashes``; every one is compared, each in
    constant time (a malformed hash never matches)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    for stored in hashes:
        try:
            salt, digest = parse_hash(stored)
        except ValueError:
            continue
        found |= hmac.compare_digest(_digest(salt, given).encode(), digest.encode())
    return found


def identity(key: str) -> str:
    """The key's name in Redis: a SHA-256 prefix of the key, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
