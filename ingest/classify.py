"""Which failures of a WebSocket connection are worth a reconnect."""

from __future__ import annotations

import asyncio
import enum
import ssl

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from common.errors import FatalError, RetryableError


class Verdict(enum.Enum):
    RETRY = "retry"
    FATAL = "fatal"


# 401/403/404 from the upgrade: a wrong URL or a blocked region; retrying hammers Bybit's
# 500-connections-per-5-minutes budget without any hope. 429 and 5xx pass with time.
_FATAL_STATUS = frozenset({400, 401, 403, 404})


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, FatalError | InvalidURI):
        return Verdict.FATAL
    if isinstance(exc, InvalidStatus):
        return Verdict.FATAL if exc.response.status_code in _FATAL_STATUS else Verdict.RETRY
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Verdict.FATAL
    if isinstance(
        exc,
        ConnectionClosed
        | InvalidHandshake
        | OSError
        | TimeoutError
        | asyncio.TimeoutError
        | RetryableError
        | EOFError,
    ):
        return Verdict.RETRY
    return Verdict.FATAL
