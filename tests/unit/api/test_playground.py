"""The playground page: served at /playground with a policy that keeps it to its own origin,
shipped as package data; `/` stays Ollama's answer."""

from html.parser import HTMLParser

from api.playground import page
from tests.unit.api.harness import Harness


class _Links(HTMLParser):
    """Every URL the page refers to in its markup."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action")]


async def test_the_page_is_served_and_self_contained(harness: Harness) -> None:
    response = await harness.client.get("/playground")
    root = await harness.client.get("/")
    assert response.status_code == 200
    assert (await harness.client.head("/playground")).status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert root.text == "Ollama is running"
    links = _Links()
    links.feed(response.text)
    assert links.urls == ["data:,"]  # the empty favicon: nothing else is fetched by markup
    # The API is reached by relative URLs only, so the page works under a proxy's prefix.
    for path in ("v1/models", "v1/chat/completions", "v1/jobs/"):
        assert f'"{path}' in response.text or f"`{path}" in response.text
    assert 'fetch("/' not in response.text and "fetch(`/" not in response.text
    assert "innerHTML" not in response.text  # model output is set as text only


def test_the_page_ships_as_package_data() -> None:
    assert "<title>tokenq playground</title>" in page()
