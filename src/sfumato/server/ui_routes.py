"""The web UI: one page of our own (HTML, CSS, plain JavaScript) over the public API.

Why not Gradio: the UI must show what the API does (the queue, its progress and previews) and nothing
else, so it is a client of the same endpoints every script uses and needs no second request path;
a few static files load instantly, need no build step and no large dependency, and every value from
the server is set as text, never as HTML (stored-XSS through prompts or PNG metadata is the peers'
recurring bug). The page is served with a strict Content-Security-Policy for the same reason.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response

from sfumato.errors import NotFoundError

router = APIRouter(include_in_schema=False)
FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _file(name: str) -> Response:
    if name not in FILES:  # a fixed list: no path from the client ever reaches the file system
        raise NotFoundError(f"no UI file {name!r}", field="path")
    content = resources.files("sfumato.server").joinpath("ui", name).read_bytes()
    return Response(content, media_type=FILES[name], headers=SECURITY_HEADERS)


@router.get("/")
def index() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
def ui_file(name: str) -> Response:
    return _file(name)
