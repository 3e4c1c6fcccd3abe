"""The pages the service serves itself: /docs and /redoc point only at packaged assets, the
console and its assets load without a token while its data needs one."""

from __future__ import annotations

import re

import httpx

from tests.conftest import MakeSettings, running_app

TOKEN = "pages-token"
LINKS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def links(html: str) -> list[str]:
    return LINKS.findall(html)


async def test_docs_pages_load_only_packaged_assets(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (_app, client):
        for page in ("/docs", "/redoc"):
            answer = await client.get(page)
            assert answer.status_code == 200
            assert "default-src 'self'" in answer.headers["content-security-policy"]
            assert "http://" not in answer.text and "https://" not in answer.text
            assert "fonts.googleapis" not in answer.text
            found = links(answer.text)
            assert found and all(link.startswith("/docs/assets/") for link in found), found
            for link in found:
                asset = await client.get(link)
                assert asset.status_code == 200, link
                assert len(asset.content) > 1000, link
            assert (await client.head(page)).status_code == 200
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200


async def test_docs_pages_follow_a_proxys_root_path(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as (app, _client):
        transport = httpx.ASGITransport(app=app, root_path="/orchestrator")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            html = (await client.get("/docs")).text
    assert "'/orchestrator/openapi.json'" in html
    assert all(link.startswith("/orchestrator/docs/assets/") for link in links(html))


async def test_console_page_and_assets_load_without_the_token_its_data_does_not(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(api_token=TOKEN)) as (_app, client):
        root = await client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui"
        page = await client.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        # Relative links only (they work below a proxy's path prefix too), each one served.
        assets = [link for link in links(page.text) if not link.startswith("data:")]
        assert all("//" not in link and not link.startswith("/") for link in assets), assets
        for link in assets:
            assert (await client.get(f"/{link}")).status_code == 200, link
        assert (await client.get("/ui/config")).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        config = (await client.get("/ui/config", headers=auth)).json()
        assert config["low_memory_threshold_mib"] == 2048


async def test_pages_and_the_event_stream_stay_out_of_the_openapi_schema(
    make_settings: MakeSettings,
) -> None:
    # Pages are not API; the endless /events stream would hang a client that reads whole bodies
    # (the schema-driven fuzzer does). All are described in the API's description instead.
    async with running_app(make_settings()) as (_app, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
    hidden = {"/", "/ui", "/ui/config", "/docs", "/redoc", "/events"}
    assert hidden.isdisjoint(paths)
    assert "/models" in paths
