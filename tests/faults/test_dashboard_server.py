"""Issue 24, the dashboard server and the terminal: a DNS-rebound ``Host`` is refused (page and
websocket, even with a valid session token), the served names and ``--allow-host`` work, a busy
port or foreign address is one line, closed tabs leave no traceback, and names printed to the
terminal carry no raw control characters."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faults.test_cli_errors import one_line

EVIL = "evil.example"
ESCAPE_NAME = "\x1b]0;pwned\x07\x1b[2J\u202etxt.json"  # sets the title, clears the screen, reverses text
LENS = [sys.executable, "-m", "lens.cli"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from tests.dashboards.synthetic import make_results_folder

    return make_results_folder(tmp_path_factory.mktemp("served") / "results", n_layers=2, n_heads=2, n_tokens=12)


@pytest.fixture(scope="module")
def server(folder):
    from attnlens.dashboards.app import serve

    served = serve(folder, show=False, map_method="pca", threaded=True, allow_hosts=["proxy.example", "b.example:8443"])
    yield served
    served.stop()


def get(port: int, host: str, path: str = "/", **headers) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Origin", f"http://{host}")
        for k, v in headers.items():
            conn.putheader(k.replace("_", "-"), v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def token_of(page: str) -> str:
    m = re.search(r'"token":\s*"([^"]+)"', page)
    assert m, page[-500:]
    return m.group(1)


def websocket(port: int, host: str, token: str) -> str:
    """Open the Bokeh websocket as a page served as ``http://host/`` would, and return its first message."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    async def go():
        req = HTTPRequest(f"ws://127.0.0.1:{port}/ws", headers={"Host": host, "Origin": f"http://{host}"},
                          request_timeout=60)
        ws = await websocket_connect(req, subprotocols=["bokeh", token])
        try:
            return await asyncio.wait_for(ws.read_message(), 60)
        finally:
            ws.close()

    # a thread of its own: an earlier test (a notebook kernel, Panel) may leave a loop running in this one
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(go())
        except BaseException as err:  # re-raised in the test's thread
            out["error"] = err

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- DNS rebinding ------------------------------------------------------------------------------
def test_a_rebound_host_gets_no_page_and_no_token(server):
    port = server.port
    code, body = get(port, f"{EVIL}:{port}")
    assert code == 403 and "does not answer to host" in body and EVIL in body
    assert "token" not in body and "<html" not in body.lower()
    for path in ("/static/js/bokeh.min.js", "/autoload.js?bokeh-autoload-element=x", "/ws", "/nothing"):
        assert get(port, f"{EVIL}:{port}", path)[0] == 403, path


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LOCALHOST"])
def test_the_served_names_get_the_page(server, name):
    code, body = get(server.port, f"{name}:{server.port}")
    assert code == 200 and token_of(body)


def test_the_served_name_on_another_port_is_refused(server):
    # a page on localhost:OTHER is another origin; it must not read this server either
    assert get(server.port, f"localhost:{server.port + 1}")[0] == 403
    assert get(server.port, "localhost")[0] == 403  # no port: port 80
    assert get(server.port, f"[::1]:{server.port}")[0] == 403  # not bound to IPv6: not a name of this server


def test_a_rebound_host_gets_no_websocket_even_with_a_valid_token(server):
    from tornado.httpclient import HTTPClientError

    port = server.port
    token = token_of(get(port, f"127.0.0.1:{port}")[1])
    assert "ACK" in websocket(port, f"127.0.0.1:{port}", token)  # the right host: the session opens
    token = token_of(get(port, f"127.0.0.1:{port}")[1])
    with pytest.raises(HTTPClientError) as refused:
        websocket(port, f"{EVIL}:{port}", token)
    assert refused.value.code == 403


def test_allowed_hosts_get_the_page_and_the_websocket(server):
    port = server.port
    for host in ("proxy.example", "proxy.example:443", "b.example:8443"):
        code, body = get(port, host)
        assert code == 200, host
    assert "ACK" in websocket(port, "proxy.example", token_of(get(port, "proxy.example")[1]))
    assert get(port, "b.example")[0] == 403  # allowed with port 8443 only
    assert get(port, "proxy.example.evil.example")[0] == 403


def test_host_policy_names():
    from attnlens.dashboards._hosts import HostPolicy

    p = HostPolicy.serving("127.0.0.1", 5006)
    assert p.allows("127.0.0.1:5006") and p.allows("Localhost:5006") and not p.allows("[::1]:5006")
    assert HostPolicy.serving("::1", 5006).allows("[::1]:5006") and HostPolicy.serving("localhost", 1).allows("[::1]:1")
    assert not p.allows("evil.example:5006") and not p.allows("127.0.0.1.evil.example:5006")
    assert not p.allows("localhost:5006@evil.example") and not p.allows("") and not p.allows("a b:5006")
    wild = HostPolicy.serving("0.0.0.0", 8000)
    assert wild.allows("10.1.2.3:8000") and wild.allows("[fe80::1]:8000") and not wild.allows("evil.example:8000")
    assert "evil.example:8000" not in wild.origins()


def test_bad_allow_hosts_are_refused_in_one_line(folder, cli):
    from attnlens.dashboards.app import ServeError, serve

    for bad, words in ((["x:99999"], "port '99999' is not a number in 1-65535"), (["a b"], "is not a host name"),
                       ([3], "expected HOST[:PORT] strings, got int")):
        with pytest.raises(ServeError, match=re.escape(words)) as err:
            serve(folder, allow_hosts=bad, start=False, show=False)
        assert err.value.argument == "allow_hosts"
    line = one_line(*cli("dashboard", folder, "--allow-host", "evil.example:0", "--no-show")[::2])
    assert line.startswith("error: --allow-host") and "'evil.example:0' is not HOST[:PORT]" in line
    with pytest.raises(ServeError, match="port: expected an integer in 0-65535"):
        serve(folder, port="5006", start=False, show=False)


# ---- ports and addresses ---------------------------------------------------------------------------
def test_a_busy_port_is_one_line(folder, cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        line = one_line(*cli("dashboard", folder, "--port", busy, "--no-show")[::2])
    assert line.startswith("error: --port") and f"127.0.0.1:{busy} is already in use" in line


def test_an_address_of_another_machine_is_one_line(folder, cli):
    line = one_line(*cli("dashboard", folder, "--address", "192.0.2.1", "--no-show")[::2])
    assert line.startswith("error: --address") and "is not an address of this machine" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may listen on any port")
def test_a_privileged_port_is_one_line(folder, cli):
    line = one_line(*cli("dashboard", folder, "--port", "80", "--no-show")[::2])
    assert line.startswith("error: --port") and "permission denied" in line


def test_the_default_port_is_a_free_one(folder):
    from attnlens.dashboards.app import serve

    a = serve(folder, show=False, start=False, map_method="pca")
    b = serve(folder, show=False, start=False, map_method="pca")  # a fixed default port would be busy now
    try:
        assert a.port > 0 and b.port > 0 and a.port != b.port
    finally:
        a.stop(wait=False)
        b.stop(wait=False)


# ---- the real command: --allow-host, the URL, escaped names ----------------------------------------------
def test_lens_dashboard_serves_allowed_hosts_and_prints_names_escaped(folder, tmp_path):
    import shutil

    crafted = tmp_path / "results"
    shutil.copytree(folder, crafted)
    (crafted / "scan" / ESCAPE_NAME).write_text('{"kind": "head_scores"')
    proc = subprocess.Popen([*LENS, "dashboard", str(crafted), "--no-show", "--maps", "pca",
                             "--allow-host", "proxy.example:8443"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    out = bytearray()
    threading.Thread(target=lambda: [out.extend(chunk) for chunk in iter(lambda: proc.stdout.read1(4096), b"")],
                     daemon=True).start()
    try:
        deadline = time.time() + 120
        while b"(Ctrl-C stops)" not in out and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        text = out.decode("utf-8", "replace")
        m = re.search(r"at http://127\.0\.0\.1:(\d+)/ \(Ctrl-C stops\)", text)
        assert m, text
        port = int(m.group(1))
        assert port != 0 and get(port, "proxy.example:8443")[0] == 200
        assert get(port, f"{EVIL}:{port}")[0] == 403
        assert get(port, "proxy.example:8444")[0] == 403
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert b"\x1b" not in out and b"\x07" not in out and "\u202e".encode() not in out, bytes(out)
    text = out.decode()
    assert "warning: scan/\\x1b]0;pwned\\x07\\x1b[2J\\u202etxt.json: is not valid JSON" in text, text
    assert "Traceback" not in text, text


# ---- the terminal ----------------------------------------------------------------------------------
def test_printable_escapes_control_characters_only():
    from lens.cli._terminal import printable

    assert printable("a\x1b]0;t\x07b\x1b[2J") == "a\\x1b]0;t\\x07b\\x1b[2J"
    assert printable("one\ntwo\r\tthree\x7f\x9b") == "one\\ntwo\\r\\tthree\\x7f\\x9b"
    assert printable("abc\u202edef\u2066\u2028") == "abc\\u202edef\\u2066\\u2028"
    assert printable("caf\udce9.json") == "caf\\udce9.json"  # an undecodable byte in a file name
    assert printable("héllo [bold] 日本 😀 a\\b") == "héllo [bold] 日本 😀 a\\b"
    assert printable(Path("x\x1by")) == "x\\x1by"


def test_error_lines_escape_what_the_user_typed(cli, tmp_path):
    line = one_line(*cli("capture", "\x1b]0;pwned\x07\x1b[2J", "--prompt", "hi", "--out", tmp_path / "o")[::2])
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;pwned\\x07\\x1b[2J" in line
    line = one_line(*cli("dashboard", tmp_path / "a\x1b[2Jb\nerror: forged")[::2])  # a path, printed with str()
    assert "results folder" in line and "does not exist" in line and "a\\x1b[2Jb error: forged" in line  # one line


def test_say_escapes(capsys):
    from lens.cli._common import say, status

    say("warning: \x1b[31mred\x1b[0m\nerror: forged")
    with status("loading \x1b]0;x\x07"):
        pass
    err = capsys.readouterr().err
    assert "\x1b[31m" not in err and "\\x1b[31mred\\x1b[0m\\nerror: forged" in err
    assert err.count("\n") == 1  # the forged second line stays on the first


# ---- closed tabs ---------------------------------------------------------------------------------------
def test_a_closed_tab_leaves_no_traceback(caplog, capsys):
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    from attnlens.dashboards._quiet import quiet_closed_websockets

    loop = asyncio.new_event_loop()
    try:
        quiet_closed_websockets(loop)
        quiet_closed_websockets(loop)  # idempotent: one handler
        with caplog.at_level(logging.DEBUG):
            for exc in (WebSocketClosedError(), StreamClosedError()):
                loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": exc})
            logging.getLogger("bokeh.server.views.ws").warning("Failed sending message as connection was closed")
            loop.call_exception_handler({"message": "something else", "exception": KeyError("real bug")})
        shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(shown) == 1 and "something else" in shown[0].getMessage(), shown  # a real error still shows
        assert shown[0].exc_info and isinstance(shown[0].exc_info[1], KeyError)
    finally:
        loop.close()


def test_table_titles_with_a_crafted_model_name(capsys):
    """A model name (a local folder's) in a table title is neither Rich markup nor terminal control."""
    from lens.cli.heads_cmds import print_results

    print_results([], "x[/]y \x1b]0;pwned\x07: head analyses")  # "[/]" as markup raised MarkupError
    err = capsys.readouterr().err
    assert "\x1b" not in err and "x[/]y \\x1b]0;pwned\\x07: head analyses" in err


def test_generated_text_is_escaped_on_a_terminal_only(cli, monkeypatch):
    """A crafted tokenizer can decode to escape sequences: `lens generate` escapes them on a
    terminal (newlines kept) and writes them unchanged into a pipe."""
    import lens
    from lens.loaded import LoadedModel

    monkeypatch.setattr(LoadedModel, "generate", lambda self, *a, **k: "one\x1b]0;pwned\x07\ntwo\tthree")
    assert isinstance(lens.load("tiny-llama"), LoadedModel)
    code, out, _ = cli("generate", "tiny-llama", "--prompt", "hi")
    assert code == 0 and out == "one\x1b]0;pwned\x07\ntwo\tthree\n"  # a pipe: the bytes the model gave
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = cli("generate", "tiny-llama", "--prompt", "hi")
    assert code == 0 and out == "one\\x1b]0;pwned\\x07\ntwo\tthree\n"
