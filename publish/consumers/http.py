"""websockets' `process_request` to the pure HTTP routes of publish/routes.py: one adapter."""

from __future__ import annotations

import email.utils
from http import HTTPStatus

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from publish.routes import HttpRoutes


async def answer(routes: HttpRoutes, request: Request) -> Response | None:
    """The HTTP response for a route of `routes`; None for any other request (an upgrade)."""
    got = await routes.handle(request.path, request.headers.get("Authorization"))
    if got is None:
        return None
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Type", got.content_type),
            ("Content-Length", str(len(got.body))),
            ("Connection", "close"),
        ]
    )
    if got.challenge:
        headers["WWW-Authenticate"] = 'Basic realm="klines", charset="UTF-8"'
    return Response(got.status, HTTPStatus(got.status).phrase, headers, got.body)
