"""publish.auth: Basic auth or `auth=<user>:<key>` in the query, both parts always compared."""

from __future__ import annotations

import base64
from urllib.parse import quote

from publish.auth import Credentials

CREDS = Credentials(b"user", b"p@ss:w&rd")


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_auth() -> None:
    assert CREDS.allows(basic("user:p@ss:w&rd"), "/candles")
    assert not CREDS.allows(basic("user:p@ss:w&r"), "/candles")
    assert not CREDS.allows(basic("usr:p@ss:w&rd"), "/candles")
    assert not CREDS.allows(basic("user"), "/candles")
    assert not CREDS.allows("Basic !!!", "/candles")
    assert not CREDS.allows("Bearer x", "/candles")
    assert not CREDS.allows(None, "/candles")


def test_query_auth_is_url_decoded() -> None:
    assert CREDS.allows(None, "/v5/market/kline?symbol=X&auth=" + quote("user:p@ss:w&rd"))
    assert not CREDS.allows(None, "/v5/market/kline?auth=user:p@ss:w&rd")  # & not encoded
    assert not CREDS.allows(None, "/v5/market/kline?auth=" + quote("user:wrong"))
    assert not CREDS.allows(None, "/?xauth=" + quote("user:p@ss:w&rd"))
    assert not CREDS.allows(basic("user:wrong"), "/?auth=")
    # a wrong header does not hide a right query parameter (and the other way round)
    assert CREDS.allows(basic("user:wrong"), "/?auth=" + quote("user:p@ss:w&rd"))
