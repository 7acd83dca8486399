"""API keys: how they are made, how they are stored, how a presented key is recognised.

A key is ``tg_`` followed by 32 random bytes from ``secrets`` (URL-safe base64, 43 characters). The
database stores only its SHA-256 digest (``billing.api_keys.key_hash``) and the first few characters
(``key_prefix``) so an operator can tell keys apart in listings; the key itself is shown once, when it
is created, and cannot be recovered.

Why a plain, unsalted SHA-256 and not a password hash (bcrypt, scrypt, Argon2): those are slow and
salted to make guessing a *low-entropy* secret chosen by a person expensive. A generated key has 256
bits of entropy, so there is nothing to guess: a leaked digest cannot be reversed or brute-forced
either way, and a fast hash lets the gateway authenticate every request with one indexed lookup
(``billing.authenticate_api_key``) instead of spending tens of milliseconds of CPU per request. A salt
would also make the digest unsearchable (each row would need hashing to compare).

Recognising a key: the gateway hashes what it was given, looks the digest up through the unique index,
and then compares the stored digest with ``hmac.compare_digest`` (``digest_matches``), so the final
comparison in Python takes the same time wherever the bytes differ.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "tg_"
# Characters of the key kept in clear for listings: the "tg_" marker and 7 random characters, too few
# to help anyone guess the remaining 36.
PREFIX_LENGTH = 10


def generate_key() -> str:
    """A new random API key: ``tg_`` + 32 bytes of ``secrets.token_urlsafe`` (256 bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """The 32-byte SHA-256 digest of the key, as stored in ``billing.api_keys.key_hash``."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_prefix(key: str) -> str:
    """The first characters of the key, stored in clear to tell keys apart in listings."""
    return key[:PREFIX_LENGTH]


def digest_matches(stored_digest: bytes, key: str) -> bool:
    """Whether `key` hashes to `stored_digest`, compared in constant time."""
    return hmac.compare_digest(stored_digest, hash_key(key))
