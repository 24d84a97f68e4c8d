"""The request-body size limit, as ASGI middleware around the application.

A body declared larger than the limit (``Content-Length``) is refused before any of it is read
(a client that sent ``Expect: 100-continue`` never has to send it); a chunked body is counted as
it arrives and refused as soon as it passes the limit. Either way the route that reads the body
gets a ``ServeError`` (413), which the application answers like any other error.
"""

from __future__ import annotations

from .errors import ServeError

DEFAULT_MAX_BODY_MB = 10.0


def too_large(size: int, limit: int) -> ServeError:
    return ServeError(413, "body_too_large", f"the body is {size:,} bytes or more; the limit is {limit:,} bytes")


def limit_body(app, max_bytes: int):
    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        declared = int(declared) if declared is not None and declared.isdigit() else None
        received = 0

        async def receive_limited():
            nonlocal received
            if declared is not None and declared > max_bytes:
                raise too_large(declared, max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise too_large(received, max_bytes)
            return message

        await app(scope, receive_limited, send)

    return limited
