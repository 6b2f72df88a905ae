"""The dashboard's static files: served by the server itself, no CDN, imports that resolve."""

import pathlib
import re
import urllib.request

import pytest

STATIC = pathlib.Path(__file__).resolve().parents[2] / "coda_ws" / "static"
PAGES = ("index.html", "debug.html")


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


@pytest.mark.parametrize("path, page", [("", "index.html"), ("debug", "debug.html")])
def test_pages_and_their_assets_are_served(server, path, page):
    """GET / and GET /debug serve the pages; every asset they reference is served too."""
    status, kind, body = _get(server.http_url + path)
    assert status == 200 and kind.startswith("text/html")
    assert body == (STATIC / page).read_bytes()
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', body.decode())
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        status, kind, data = _get(server.http_url + asset)
        assert status == 200, asset
        assert data == (STATIC / asset[len("static/") :]).read_bytes()
        if asset.endswith(".js"):
            assert "javascript" in kind, (asset, kind)


def test_no_remote_references():
    """Nothing in the package's pages, scripts or styles is loaded from another host."""
    for path in STATIC.rglob("*"):
        if path.suffix not in (".html", ".js", ".css") or path.parent.name == "vendor":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href|import|from|url\()\s*[=(]?\s*[\"']?(https?:)?//", text), path


def test_module_imports_resolve():
    """Every relative import in the dashboard's ES modules names a file that exists."""
    modules = [STATIC / "coda-ws-client.js", *sorted((STATIC / "dashboard").glob("*.js"))]
    for module in modules:
        for target in re.findall(r'^import .* from "(\.[^"]+)";', module.read_text(), re.M):
            assert (module.parent / target).resolve().is_file(), (module.name, target)


def test_vendored_chart_library_is_pinned_with_licence():
    """uPlot is vendored with its licence, and the README names the version the file carries."""
    vendor = STATIC / "vendor"
    header = (vendor / "uPlot.iife.min.js").read_text()[:200]
    version = re.search(r"\(v(\d+\.\d+\.\d+)\)", header).group(1)
    readme = (vendor / "README.md").read_text()
    assert f"| {version} |" in readme
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()


def test_readme_and_docs_show_the_dashboard_on_a_phone_and_a_desktop():
    """The README and the docs' Dashboard page show both screenshots; they exist,
    are PNG files and stay small (a few hundred KB at most); the page documents
    the token in the fragment and where the page keeps it."""
    root = STATIC.parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    page = (root / "docs" / "dashboard.md").read_text(encoding="utf-8")
    for name in ("dashboard.png", "dashboard-phone.png"):
        assert (f"docs/{name}" in readme and f"({name})" in page) or f'"{name}"' in page, name
        data = (root / "docs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) < 400_000, (name, len(data))
    assert "#token=" in page and "sessionStorage" in page
