"""`/docs` and `/redoc` without internet: every script, style sheet and icon the pages name is
served by this app (app/docs_assets.py). The browser half is in tests/test_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from app import Settings, create_app
from app.docs_assets import ASSETS_URL, install_offline_docs

# src= and href= values, and the url: Swagger UI is told to load.
REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


def references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCES.findall(html)]


@pytest.fixture(scope="module")
def app(tiny_checkpoint: Path) -> FastAPI:
    return create_app(Settings(checkpoint=tiny_checkpoint))


def test_fastapis_own_docs_page_needs_a_cdn() -> None:
    """What this module replaces: a plain FastAPI app's pages load from other hosts."""
    client = TestClient(FastAPI())
    assert any(ref.startswith("https://") for ref in references(client.get("/docs").text))
    assert "fonts.googleapis.com" in client.get("/redoc").text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_the_docs_pages_comes_from_the_server(app: FastAPI, page: str) -> None:
    install_offline_docs(app)
    client = TestClient(app)
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html  # not even a font or a validator badge
    refs = references(html)
    assets = [r for r in refs if r.startswith(ASSETS_URL + "/")]
    assert len(assets) >= (3 if page == "/docs" else 2), refs  # script, style sheet (Swagger UI) and icon
    for ref in refs:
        assert ref.startswith("/"), f"{page} names {ref!r}, not a path on this server"
        got = client.get(ref)
        assert got.status_code == 200, (ref, got.status_code)
        if ref.endswith(".js"):
            assert len(got.content) > 100_000 and "javascript" in got.headers["content-type"]
        if ref.endswith(".css"):
            assert got.headers["content-type"].startswith("text/css")
    if page == "/docs":
        assert "'/openapi.json'" in html and '"validatorUrl": null' in html
        assert client.get("/docs/oauth2-redirect").status_code == 200


def test_install_is_idempotent_and_keeps_the_api(tiny_checkpoint: Path) -> None:
    app = create_app(Settings(checkpoint=tiny_checkpoint))
    before = sorted(r.path for r in app.router.routes if isinstance(r, Route))
    install_offline_docs(app)
    install_offline_docs(app)
    after = [r.path for r in app.router.routes if isinstance(r, Route)]
    assert sorted(after) == before  # the same pages, replaced, none doubled
    assert [getattr(r, "path", None) for r in app.router.routes].count(ASSETS_URL) == 1
    schema = TestClient(app).get("/openapi.json").json()
    assert "/generate" in schema["paths"] and not any(p.startswith(ASSETS_URL) for p in schema["paths"])


def test_root_path_prefixes_every_reference() -> None:
    """Behind a proxy that strips a prefix (root_path), the page must name the prefixed paths."""
    app = FastAPI()
    install_offline_docs(app)
    html = TestClient(app, root_path="/ddpm").get("/docs").text
    refs = references(html)
    assert refs and all(r.startswith("/ddpm/") for r in refs), refs


def test_an_app_without_docs_gets_none() -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    install_offline_docs(app)
    client = TestClient(app)
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_the_servers_own_docs_load_nothing_from_outside(tiny_checkpoint: Path) -> None:
    from fastapi.testclient import TestClient

    from app import Settings, create_app

    with TestClient(create_app(Settings(checkpoint=tiny_checkpoint))) as client:
        for path in ("/docs", "/redoc"):
            page = client.get(path)
            assert page.status_code == 200 and "https://" not in page.text, path
