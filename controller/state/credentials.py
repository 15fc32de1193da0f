"""PNode credentials: random bearer secrets of which the store keeps only a hash.

A plain (unsalted) SHA-256 is enough here, unlike for passwords: the secret is 256 random
bits, so there is no dictionary to try. Comparison is constant-time so that timing reveals
nothing about how much of a forged credential's hash matched. A credential never appears in
a log line, an error message or a record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Bytes of randomness in a credential (the text is longer: URL-safe base64).
CREDENTIAL_BYTES = 32


def issue() -> tuple[str, str]:
    """A fresh credential and the hash to store for it."""
    credential = secrets.token_urlsafe(CREDENTIAL_BYTES)
    return credential, digest(credential)


def digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def matches(credential: str | None, stored_hash: str) -> bool:
    """Whether `credential` is the one whose hash is stored; False for a missing one, or
    when nothing is stored (a record without a hash accepts no credential at all)."""
    if not credential or not stored_hash:
        return False
    return hmac.compare_digest(digest(credential), stored_hash)
