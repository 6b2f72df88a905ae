"""The security side of the command line: token files, origins, refusing exposure."""

from coda_ws.auth import load_token_file
from coda_ws.cli import main

from .._proc import Child
from ..conftest import TIMEOUT, connect, recv_json
from ..rawws import RawClient


def test_token_new_prints_a_strong_token_with_scopes(capsys, tmp_path):
    """`coda-ws token new` prints TOKEN=scopes that a token file accepts."""
    assert main(["token", "new", "--scopes", "read,read:content"]) == 0
    line = capsys.readouterr().out.strip()
    token, scopes = line.split("=")
    assert len(token) >= 40 and scopes == "read,read:content"
    path = tmp_path / "tokens"
    path.write_text(f"# dashboards\n{line}\n")
    assert load_token_file(path) == {token: {"read", "read:content"}}


def test_token_new_refuses_unknown_scopes(capsys):
    """An unknown scope is a usage error naming the known ones."""
    try:
        main(["token", "new", "--scopes", "root"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "read, read:content, publish, admin" in capsys.readouterr().err


def test_serve_refuses_a_bad_token_file(tmp_path, capsys):
    """A token file with an unknown scope stops `serve` with exit 1 and a message naming the entry."""
    path = tmp_path / "tokens"
    path.write_text("abcdef=read\nsecret-value=superuser\n")
    assert main(["serve", "--port", "0", "--token-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "entry 2" in err and "superuser" in err and "secret-value" not in err


def test_serve_refuses_public_bind_without_tokens(capsys):
    """`serve --host 0.0.0.0` without tokens refuses and says how to add them."""
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "--token-file" in capsys.readouterr().err


def test_serve_with_token_file_and_allowed_origin(tmp_path):
    """A server started with --token-file and --allow-origin enforces both."""
    path = tmp_path / "tokens"
    path.write_text("reader-abcdefghijklmnop=read\n")
    child = Child("-m", "coda_ws", "serve", "--host", "127.0.0.1", "--port", "0", "--token-file", path,
                  "--allow-origin", "https://dash.example.com")
    try:
        url = child.wait_for_output(r"serving on (ws://\S+)").group(1)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert RawClient(port, "/").status == 401
        assert RawClient(port, "/", headers=[("Authorization", "Bearer reader-abcdefghijklmnop"),
                                             ("Origin", "https://evil.example")]).status == 403
        headers = {"Authorization": "Bearer reader-abcdefghijklmnop", "Origin": "https://dash.example.com"}
        with connect(url + "?v=1", additional_headers=headers) as ws:
            assert recv_json(ws, TIMEOUT * 3)["type"] == "hello"
        child.interrupt()
        assert child.wait() == 0
        assert "reader-abcdefghijklmnop" not in "".join(child.stdout_lines + child.stderr_lines)
    finally:
        child.kill()
