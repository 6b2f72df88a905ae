"""Security headers of the dashboard and debug pages, and of every other answer of coda_ws's routes."""

import pathlib
import re
import urllib.request

import pytest
from flask import Flask

from tests._http import get

STATIC = pathlib.Path(__file__).resolve().parents[2] / "coda_ws" / "static"


def _csp(header):
    """A Content-Security-Policy header as {directive: [sources]}."""
    policy = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            policy[words[0]] = words[1:]
    return policy


def _check_page_headers(answer):
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    policy = _csp(answer.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no other host
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]  # the WebSocket and the HTTP API of the page's own host
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["", "debug"])
def test_pages_send_security_headers(server, path):
    """GET / and GET /debug carry a CSP that allows only the page's own
    scripts, styles and host, frame-ancestors 'none', nosniff and no-referrer."""
    _check_page_headers(get(server, path))


@pytest.mark.parametrize("path", ["", "debug"])
def test_mounted_pages_send_security_headers_and_leave_the_app_alone(server_factory, path):
    """Mounted under /coda-ws/ on an application's app, the pages carry the
    same headers; the application's own pages get none of them."""
    app = Flask("host_application")
    app.add_url_rule("/", "home", lambda: "the application's own page")
    server = server_factory(app=app)
    _check_page_headers(get(server, path))
    with urllib.request.urlopen(server.http_url.replace("/coda-ws/", "/"), timeout=5) as home:
        assert home.read() == b"the application's own page"
        assert "Content-Security-Policy" not in home.headers
        assert "X-Content-Type-Options" not in home.headers


@pytest.mark.parametrize(
    "path",
    [
        "static/app.css",
        "static/dashboard/main.js",
        "static/vendor/uPlot.iife.min.js",
        "healthz",
        "turns",
        "schema",
    ],
)
def test_static_files_and_json_answers_are_not_sniffed(server, path):
    """Static files and JSON answers carry X-Content-Type-Options: nosniff."""
    answer = get(server, path)
    assert answer.status == 200, answer
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_have_no_inline_script_style_or_handler():
    """The pages work under script-src/style-src 'self': no inline <script>,
    no <style> element, no style="" or on...="" attribute, no javascript: URL."""
    for name in ("index.html", "debug.html"):
        html = (STATIC / name).read_text(encoding="utf-8")
        for script in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in script, (name, script)
        assert "<style" not in html, name
        assert not re.search(r"\sstyle\s*=", html), name
        assert not re.search(r"\son[a-z]+\s*=", html), name
        assert "javascript:" not in html, name
