"""Reading a request body ahead of the app, in a pure ASGI middleware, and handing it on.

`read_body` takes the body messages until the body ends, or stops as soon as it passes `cap`
or the client leaves; `replaying` gives the app a `receive` that first returns what was read.
Used by AuthFirstMiddleware (the body's tenant) and DecideFastPath (the decision itself).
"""

from __future__ import annotations

from collections import deque

from starlette.types import Message, Receive


async def read_body(receive: Receive, cap: int) -> tuple[list[Message], bytes | None]:
    """The body messages as read, and the whole body; None for the body when reading stopped
    (past `cap` bytes, or an http.disconnect): the messages read so far are then all there is
    to replay."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None  # http.disconnect
        size += len(message.get("body", b""))
        if size > cap:
            return messages, None
        if not message.get("more_body", False):
            break
    return messages, b"".join(m.get("body", b"") for m in messages)


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that first hands out `messages` (the body read ahead), then the rest."""
    pending = deque(messages)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay
