"""The API documentation pages (`/docs`: Swagger UI, `/redoc`: ReDoc) from installed assets.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google), so
on a machine without internet, behind a strict proxy or in an air-gapped cluster they are blank
pages. The same scripts are shipped inside the `fastapi-offline` package (MIT; it bundles
swagger-ui-dist 5 and redoc 2); here they are served from that installed copy, under
`/docs-assets/`, and the pages point there. Nothing on either page leaves the server: Swagger
UI's validator badge (which fetches from validator.swagger.io) is switched off too.

The entry point is `install_offline_docs(app)`, called once the app's routes exist.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute, Route

ASSETS_URL = "/docs-assets"
# The pages may load and connect to this server only: whatever a bundled script would fetch from
# elsewhere (ReDoc's "by Redocly" logo comes from cdn.redoc.ly) is refused by the browser before
# any request leaves, and the pages look the same. Inline code: FastAPI's page starts Swagger UI
# with an inline script, and both UIs style with inline styles; ReDoc's search runs in a blob worker.
CONTENT_SECURITY_POLICY = "default-src 'self' 'unsafe-inline' data: blob:; frame-ancestors 'self'"
# Not under /static: the page's own StaticFiles mount there would answer (404) first.
_ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The folder of the installed Swagger UI and ReDoc files (fails loudly if one is missing)."""
    folder = Path(str(resources.files("fastapi_offline") / "static"))
    missing = [name for name in _ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline's assets are incomplete: {', '.join(missing)} not in {folder}")
    return folder


def _doc_paths(app: FastAPI) -> set[str]:
    return {p for p in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}


def _is_default_doc_route(route: BaseRoute, paths: set[str]) -> bool:
    return isinstance(route, Route) and route.path in paths


def _locked(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def install_offline_docs(app: FastAPI) -> None:
    """Replaces FastAPI's CDN-based `/docs` and `/redoc` (where the app has them) with pages
    whose scripts, styles and icon come from this server. Idempotent: a second call does
    nothing. An app made with `docs_url=None` (and `redoc_url=None`) keeps no such page."""
    if getattr(app.state, "offline_docs", False):
        return
    if not app.openapi_url:
        return  # no schema, nothing for the pages to show
    folder = assets_dir()
    paths = _doc_paths(app)
    app.router.routes[:] = [r for r in app.router.routes if not _is_default_doc_route(r, paths)]
    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    openapi_url = app.openapi_url

    if app.docs_url:
        oauth2_redirect = app.swagger_ui_oauth2_redirect_url
        # validatorUrl None: no badge fetched from validator.swagger.io.
        parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

        async def swagger_ui_html(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return _locked(get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                oauth2_redirect_url=root + oauth2_redirect if oauth2_redirect else None,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=parameters,
            ))

        app.add_route(app.docs_url, swagger_ui_html, include_in_schema=False)
        if oauth2_redirect:

            async def swagger_ui_redirect(request: Request) -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

            app.add_route(oauth2_redirect, swagger_ui_redirect, include_in_schema=False)

    if app.redoc_url:

        async def redoc_html(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return _locked(get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            ))

        app.add_route(app.redoc_url, redoc_html, include_in_schema=False)
    app.state.offline_docs = True
