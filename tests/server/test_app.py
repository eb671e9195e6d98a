"""The application as a browser meets it: /docs and /redoc work without the internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

import httpx
import pytest

from tests.helpers import ServerProcess


class _Assets(HTMLParser):
    """Every URL a page makes the browser fetch: scripts, style sheets, icons, and any URL a
    script on the page names in a string (ReDoc's page passes the spec's URL that way)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._in_script = True
            if found.get("src"):
                self.urls.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.urls.append(str(found["href"]))
        if tag == "redoc" and found.get("spec-url"):
            self.urls.append(str(found["spec-url"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""['"]((?:https?:)?//[^'"]+|/[^'"\s]*)['"]""", data)


@pytest.mark.parametrize(("page", "script"), [("/docs", "SwaggerUIBundle"), ("/redoc", "Redoc")])
def test_api_docs_load_every_asset_from_the_server_itself(
    server: ServerProcess, page: str, script: str
) -> None:
    html = httpx.get(server.url + page, timeout=10)
    assert html.status_code == 200
    parser = _Assets()
    parser.feed(html.text)
    assert parser.urls, html.text
    fetched_js = ""
    for url in parser.urls:
        absolute = urljoin(server.url + page, url)
        assert urlparse(absolute).netloc == urlparse(server.url).netloc, (
            f"{page} loads {url} from elsewhere"
        )
        response = httpx.get(absolute, timeout=10)
        assert response.status_code == 200, url
        if url.endswith(".js"):
            fetched_js += response.text
    # The real bundle, not an empty file or an error page: hundreds of kB defining the UI.
    assert len(fetched_js) > 500_000 and script in fetched_js
