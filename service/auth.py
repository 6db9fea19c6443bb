"""Bearer tokens: who may write (and, if asked, read metrics)."""

import hashlib
import hmac
from collections.abc import Iterable


class BearerTokens:
    """Checks an Authorization header against the configured tokens in constant time.

    Tokens are kept only as SHA-256 digests and compared digest to digest, so the time taken
    says nothing about a token's content or length; every token is compared, so it says
    nothing about which one matched either.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(token.encode()) for token in tokens]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = _digest(credentials.strip().encode())
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        return matched


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
