"""Bearer tokens: who may write, to which streams (and, if asked, read metrics)."""

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token, and the streams it may write to: shell-style patterns, case-sensitive
    (fnmatch); none means any stream."""

    secret: str = field(repr=False)  # never printed or logged
    streams: tuple[str, ...] = ()

    def may_write(self, stream: str) -> bool:
        return not self.streams or any(fnmatchcase(stream, pattern) for pattern in self.streams)


class BearerTokens:
    """Finds the configured token an Authorization header carries, in constant time.

    Tokens are kept only as SHA-256 digests and compared digest to digest, so the time taken
    says nothing about a token's content or length; every token is compared, so it says
    nothing about which one matched either.
    """

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = [(_digest(token.secret.encode()), token) for token in tokens]

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def find(self, authorization: str | None) -> Token | None:
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        given = _digest(credentials.strip().encode())
        found = None
        for digest, token in self._tokens:
            if hmac.compare_digest(given, digest):
                found = token
        return found if scheme.lower() == "bearer" else None


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
