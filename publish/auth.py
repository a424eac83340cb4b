"""The feed's credentials (docs/protocol.md "WebSocket server (contract)"): HTTP Basic auth, or
`auth=<user>:<key>` in the query for clients that cannot set a header (Bybit's SDKs, a browser's
WebSocket).

Compared in constant time, user and key both, always. Nothing here logs: a credential never
reaches a log line (callers must not log a request target either, it may hold `auth=`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl


@dataclass(frozen=True, slots=True)
class Credentials:
    user: bytes
    key: bytes

    def allows(self, authorization: str | None, target: str) -> bool:
        """True when the Authorization header or the target's `auth` parameter names them."""
        if authorization is not None and authorization.startswith("Basic "):
            try:
                given = base64.b64decode(authorization[6:], validate=True)
            except (binascii.Error, ValueError):
                given = b""
            if self._equal(given):
                return True
        _, _, query = target.partition("?")
        if "auth=" not in query:
            return False
        # errors="strict": a key with bytes that are not UTF-8 cannot match ours anyway
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "auth":
                return self._equal(value.encode())
        return False

    def _equal(self, given: bytes) -> bool:
        user, _, key = given.partition(b":")
        # Both compared, always: no early exit that would time which part was wrong.
        return hmac.compare_digest(user, self.user) & hmac.compare_digest(key, self.key)
