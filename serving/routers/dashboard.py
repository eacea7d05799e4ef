"""``/dashboard``: the monitoring page, its scripts, and the JSON it polls (role ``admin``).

The page and its static files hold no data, so they are served to anyone: a
browser cannot send an ``X-API-Key`` header on a plain navigation. Every number
comes from ``GET /v1/monitoring/summary``, which needs the ``admin`` role when
keys are configured; the page sends the key it was given in the URL fragment
(``/dashboard#key=...``, never sent to a server) or in its key field. The chart
code is the ``plotly.min.js`` bundle shipped inside the ``plotly`` wheel,
served from here (no CDN), compressed once and cached by browsers for a year
under a URL naming its version.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path
from typing import Annotated, Final

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from infra.errors import NotFoundError
from serving.dependencies import AdminCaller, State
from serving.monitoring_summary import MonitoringData
from serving.routers.predictions import ERRORS
from serving.schemas import PydanticJSON

router = APIRouter(tags=["monitoring"])

PAGE_DIR: Final = Path(__file__).resolve().parent.parent / "dashboard"
PLOTLY: Final = "plotly.min.js"
_OWN_FILES: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_FOREVER: Final = "public, max-age=31536000, immutable"
Hours = Annotated[float, Query(ge=0.25, le=24 * 31, description="The range shown, in hours.")]


async def monitoring_data(request: Request, state: State) -> MonitoringData:
    """The app's :class:`MonitoringData`, made on first use (tests may set their own)."""
    data: MonitoringData | None = getattr(request.app.state, "monitoring", None)
    if data is None:
        data = MonitoringData(state.settings)
        request.app.state.monitoring = data
    return data


@router.get("/v1/monitoring/summary", responses=ERRORS)
async def summary(request: Request, state: State, _: AdminCaller, hours: Hours = 24.0) -> Response:
    """KPIs, estimated vs realised performance, drift, alerts, versions and retrains."""
    data = await monitoring_data(request, state)
    return PydanticJSON(await data.summary(hours))


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The page; asset URLs carry their versions, so the page itself is never cached."""
    return HTMLResponse(
        await anyio.to_thread.run_sync(page_html), headers={"Cache-Control": "no-cache"}
    )


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static(name: str, request: Request) -> Response:
    """The page's own script and style, and Plotly's bundle (gzip when accepted)."""
    if name == PLOTLY:
        raw, packed = await anyio.to_thread.run_sync(plotly_bundle)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers = {
                "Cache-Control": _FOREVER,
                "Content-Encoding": "gzip",
                "Vary": "Accept-Encoding",
            }
            return Response(packed, media_type="text/javascript", headers=headers)
        return Response(raw, media_type="text/javascript", headers={"Cache-Control": _FOREVER})
    if name not in _OWN_FILES:
        raise NotFoundError(f"no dashboard file {name!r}")
    body = (PAGE_DIR / name).read_bytes()
    return Response(body, media_type=_OWN_FILES[name], headers={"Cache-Control": _FOREVER})


def page_html() -> str:
    """``index.html`` with each asset URL suffixed by its version (a new one busts caches)."""
    html = (PAGE_DIR / "index.html").read_text()
    versions = {PLOTLY: importlib.metadata.version("plotly")}
    versions |= {name: _digest((PAGE_DIR / name).read_bytes()) for name in _OWN_FILES}
    for name, version in versions.items():
        html = html.replace(f"static/{name}", f"/dashboard/static/{name}?v={version}")
    return html


@cache
def plotly_bundle() -> tuple[bytes, bytes]:
    """The bundle inside the installed ``plotly`` package, raw and gzipped (read once)."""
    spec = importlib.util.find_spec("plotly")  # finds the folder without importing plotly
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("the plotly package is not installed: pip install plotly")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / PLOTLY
    raw = path.read_bytes()
    return raw, gzip.compress(raw, compresslevel=6)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
