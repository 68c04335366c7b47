"""Safe by default: HTTP Basic auth, Host/Origin checks, request-size limits, paths kept in their roots.

- Auth (`--api-auth user:pass[,user2:pass2]`, `--ui-auth` likewise) compares credentials in constant
  time; without it the API is open, which is why the server binds to 127.0.0.1 unless `--listen`.
- DNS rebinding: bound to loopback, a request whose Host is not a loopback name is refused.
- CSRF: a state-changing request (POST/PUT/PATCH/DELETE) carrying an Origin header must come from the
  server's own origin or one allowed with `--cors-allow-origins`; scripts send no Origin and pass.
- Bodies larger than `max_body_bytes` are refused with 413 before they are read into memory.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sfumato.errors import UserError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "testserver"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def parse_credentials(spec: str | None, flag: str) -> dict[str, str]:
    """`user:pass[,user2:pass2]` -> {user: pass}; a UserError naming the flag when malformed."""
    if not spec:
        return {}
    pairs: dict[str, str] = {}
    for item in spec.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UserError(
                f"{flag}: expected user:password[,user2:password2], got {item.strip()!r}", field=flag
            )
        pairs[user] = password
    return pairs


def credentials_ok(header: str | None, allowed: dict[str, str]) -> bool:
    """Whether an `Authorization: Basic …` header names one of the allowed user/password pairs."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    expected = allowed.get(user)
    # compare_digest on both branches, so a wrong user name costs the same time as a wrong password
    return hmac.compare_digest(password.encode(), (expected or "\0").encode()) and expected is not None


def host_name(host_header: str) -> str:
    """The host part of a Host header (IPv6 brackets kept, port dropped)."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def inside(root: Path, candidate: Path) -> Path:
    """`candidate` resolved, if it lies inside `root` (symlinks followed); UserError otherwise."""
    resolved_root = root.resolve()
    resolved = (resolved_root / candidate).resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UserError(f"path {str(candidate)!r} is outside the allowed folder", field="path")
    return resolved


async def _refuse(send: Send, status: int, message: str, field: str | None = None) -> None:
    body = json.dumps({"error": message, "detail": message, "field": field}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Host and Origin checks, and the body-size limit, before any route runs (pure ASGI, so a huge
    body is refused while streaming instead of being buffered first)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        loopback_only: bool,
        allowed_origins: tuple[str, ...],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.allowed_origins = tuple(o.rstrip("/") for o in allowed_origins)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.loopback_only and host_name(host).lower() not in LOOPBACK_HOSTS:
            await _refuse(
                send, 421, f"host {host!r} is not this server's (it listens on loopback only)", "Host"
            )
            return
        origin = headers.get("origin")
        if scope["method"] in STATE_CHANGING and origin and not self._origin_allowed(origin, host):
            await _refuse(send, 403, f"cross-origin request from {origin!r} refused", "Origin")
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _refuse(send, 413, f"request body larger than {self.max_body_bytes >> 20} MiB", "body")
            return
        await self.app(scope, self._limited(receive, send), send)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/")
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        return urlsplit(origin).netloc.lower() == host.lower()

    def _limited(self, receive: Receive, send: Send) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped


class BodyTooLarge(Exception):
    """A streamed (chunked) body went past the limit; the app turns it into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit >> 20} MiB")
