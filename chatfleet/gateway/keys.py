"""API keys: `cf_<key_id>_<secret>`; only the key id and a salted hash of the secret are stored.

    cf_3f9a1c0d2b7e4a56_Jk2...43 chars...
       '-- key_id --'   '-- secret (32 random bytes, base64url) --'

The key id is the row's primary key (lookup without scanning); the secret is checked against
sha256(salt || secret) in constant time. NOTE: a fast hash is enough here, unlike for
passwords: the secret is 256 random bits, so a stolen table cannot be brute-forced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "cf"
KEY_ID_HEX = 16


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `plain` is shown once; the rest is what the store keeps."""

    key_id: str
    plain: str
    salt: str
    secret_hash: str


def hash_secret(secret: str, salt: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    salt = secrets.token_hex(16)
    return NewKey(key_id, f"{PREFIX}_{key_id}_{secret}", salt, hash_secret(secret, salt))


def parse_key(plain: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None (never raises on junk)."""
    parts = plain.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != KEY_ID_HEX:
        return None
    key_id, secret = parts[1], parts[2]
    if not all(c in "0123456789abcdef" for c in key_id) or not secret:
        return None
    return key_id, secret


def verify_secret(secret: str, salt: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt), secret_hash)
