"""The smallest useful ASGI app: `sleipnir example:app` (or `scripts/run`)."""

BODY = b"Hello, world!"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan (and anything else): nothing to set up, the server carries on
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
