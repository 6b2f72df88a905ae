"""Plain HTTP requests to a test server (urllib), returning 4xx/5xx answers instead of raising."""

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .conftest import TIMEOUT

__all__ = ["Answer", "get", "get_json", "post_json", "request", "samples", "scrape", "value"]


class Answer:
    """An HTTP answer: ``status``, ``headers`` (case-insensitive), ``body`` (bytes)."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Answer {self.status} {self.body[:200]!r}>"


def request(server, path, method="GET", body=None, headers=None, token=None):
    """``method`` ``path`` (relative to the server's HTTP base URL) and its answer."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        server.http_url + path.lstrip("/"), data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.headers, exc.read())


def get(server, path, token=None, headers=None):
    return request(server, path, token=token, headers=headers)


def get_json(server, path, token=None):
    """GET ``path``; asserts 200 and returns the decoded body."""
    answer = get(server, path, token=token)
    assert answer.status == 200, answer
    return answer.json()


def post_json(server, body, token=None, path="events", content_type="application/json", headers=None):
    """POST ``body`` (an object to encode, or bytes as they are) to ``path``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": content_type} if content_type else {}
    all_headers.update(headers or {})
    return request(server, path, "POST", data, all_headers, token)


def scrape(server, token=None):
    """GET /metrics, parsed: ``{family name: Metric}`` (names without ``_total``)."""
    answer = get(server, "metrics", token=token)
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(answer.body.decode())}


def samples(families, name, suffix=""):
    """``{labels as a sorted tuple of (key, value): value}`` for family ``name``'s samples ``name+suffix``."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in families[name].samples
        if sample.name == name + suffix
    }


def value(families, name, suffix="", **labels):
    """The value of one sample (0.0 when the labelled series is absent)."""
    return samples(families, name, suffix).get(tuple(sorted(labels.items())), 0.0)
