"""The dashboard at `/`: static HTML, CSS and JS shipped inside the package (no CDN).

The page holds no data of its own: it asks for an API key (kept in sessionStorage, or
taken once from `/?key=...` for a wall screen and then removed from the address bar),
reads the `/v1` API with it and follows `/v1/stream` for live updates.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# The page may only talk to its own origin and load nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def mount(app: FastAPI) -> None:
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(
            f"dashboard files missing from {STATIC_DIR}: reinstall dctwin "
            "(package data api/static/*)"
        )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={
                "Content-Security-Policy": CSP,
                "Cache-Control": "no-cache",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )
