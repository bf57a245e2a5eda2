"""SSRF guard: address classes, the pre-download host check, and the guarded opener that
img2dataset's worker processes fetch through (redirects, body cap, non-http schemes)."""
from __future__ import annotations

import io
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from filters.netguard import check_host, check_ip, classify_ip, url_host_port, validate_allow
from stages.download import build_guarded_opener, classify_error


@pytest.mark.parametrize("ip,cat", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"), ("2002:7f00:1::", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("169.254.1.1", "link_local"), ("fe80::1", "link_local"), ("fe80::1%eth0", "link_local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"), ("192.0.2.1", "private"),
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None), ("93.184.216.34", None),
])
def test_classify_ip(ip, cat):
    assert classify_ip(ip) == cat


def test_check_ip_allow_and_message():
    assert check_ip("127.0.0.1", ["loopback"]) is None
    msg = check_ip("127.0.0.1")
    assert msg.startswith("blocked_address:") and "loopback" in msg and "allow_private" in msg
    # allowing link-local never opens the metadata endpoint
    assert check_ip("169.254.169.254", ["link_local"]) is not None
    assert check_ip("not an ip") is not None
    with pytest.raises(ValueError, match="unknown address categories"):
        validate_allow(["lan"])


def _resolver(table):
    def resolve(host, port, *_):
        if host not in table:
            raise OSError("name or service not known")
        return [(2, 1, 6, "", (a, port)) for a in table[host]]
    return resolve


def test_check_host_judges_every_resolved_address():
    r = _resolver({"public.example": ["93.184.216.34"], "rebind.example": ["93.184.216.34", "10.0.0.7"],
                   "meta.example": ["169.254.169.254"]})
    assert check_host("public.example", 80, resolver=r) is None
    assert "10.0.0.7" in check_host("rebind.example", 80, resolver=r)
    assert "metadata" in check_host("meta.example", 80, allow=["private", "loopback"], resolver=r)
    assert check_host("nx.example", 80, resolver=r) is None  # fails later as a connection error


def test_check_host_real_resolver_on_numeric_spellings():
    # The resolver turns every spelling of 127.0.0.1 into the same address, so all are refused.
    for host in ("127.0.0.1", "2130706433", "0x7f.1", "127.1", "localhost"):
        assert check_host(host, 80) is not None, host


@pytest.mark.parametrize("url,hp", [
    ("http://a.example/x.jpg", ("a.example", 80)), ("https://a.example:8443/x", ("a.example", 8443)),
    ("HTTP://[::1]:81/", ("::1", 81)), ("file:///etc/passwd", None), ("ftp://a.example/x", None),
    ("", None), (None, None), ("http://a.example:99999/", None), ("http:///nohost", None),
    ("javascript:alert(1)", None),
])
def test_url_host_port(url, hp):
    assert url_host_port(url) == hp


# ---- the guarded opener against a loopback server ---------------------------------------------

def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    image = b""

    def log_message(self, *a):  # keep test output quiet
        pass

    def _send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's name
        p = self.path
        port = self.server.server_address[1]
        if p == "/ok.jpg":
            self._send(200, self.image, [("Content-Type", "image/jpeg"), ("Content-Length", str(len(self.image)))])
        elif p == "/to-metadata":
            self._send(302, headers=[("Location", "http://169.254.169.254/latest/meta-data/")])
        elif p == "/to-private-name":
            self._send(302, headers=[("Location", "http://10.255.255.1/x.jpg")])
        elif p.startswith("/hop/"):
            n = int(p.rsplit("/", 1)[1])
            target = "/ok.jpg" if n == 0 else f"/hop/{n - 1}"
            self._send(302, headers=[("Location", f"http://127.0.0.1:{port}{target}")])
        elif p == "/to-file":
            self._send(302, headers=[("Location", "file:///etc/passwd")])
        elif p == "/big-declared":
            self._send(200, b"x" * 5000, [("Content-Length", "5000")])
        elif p == "/big-undeclared":  # HTTP/1.0, no Content-Length: body ends at close
            self._send(200, b"x" * 5000)
        else:
            self._send(404, b"nope")


@pytest.fixture(scope="module")
def server():
    _Handler.image = _jpeg()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _fetch(opener, url) -> tuple[bytes | None, str | None]:
    try:
        with opener.open(url, timeout=5) as r:
            return r.read(), None
    except Exception as e:  # the downloader turns any error into its message
        return None, classify_error(str(e))


def test_opener_refuses_loopback_by_default(server):
    assert _fetch(build_guarded_opener(), f"{server}/ok.jpg") == (None, "blocked_address")
    body, err = _fetch(build_guarded_opener(allow=["loopback"]), f"{server}/ok.jpg")
    assert err is None and body == _Handler.image


def test_opener_checks_redirect_targets(server):
    op = build_guarded_opener(allow=["loopback"])
    assert _fetch(op, f"{server}/to-metadata")[1] == "blocked_address"
    assert _fetch(op, f"{server}/to-private-name")[1] == "blocked_address"
    assert _fetch(op, f"{server}/to-file")[1] == "http_302"  # urllib refuses the scheme change


def test_opener_limits_redirects(server):
    op = build_guarded_opener(allow=["loopback"], max_redirects=3)
    assert _fetch(op, f"{server}/hop/2")[1] is None  # 3 redirects
    assert _fetch(op, f"{server}/hop/3")[1] == "too_many_redirects"
    assert _fetch(build_guarded_opener(allow=["loopback"], max_redirects=0), f"{server}/hop/0")[1] == \
        "too_many_redirects"


def test_opener_caps_body_size(server):
    op = build_guarded_opener(allow=["loopback"], max_bytes=1000)
    assert _fetch(op, f"{server}/big-declared")[1] == "too_large"
    assert _fetch(op, f"{server}/big-undeclared")[1] == "too_large"
    assert _fetch(build_guarded_opener(allow=["loopback"], max_bytes=5000), f"{server}/big-undeclared")[1] is None


def test_opener_has_no_file_or_ftp_handlers():
    op = build_guarded_opener(allow=list(("loopback", "private")))
    assert _fetch(op, "file:///etc/passwd") == (None, "invalid_url")
    assert _fetch(op, "ftp://127.0.0.1/x")[1] == "invalid_url"


def test_download_stage_end_to_end(server, tmp_path: Path):
    """Through img2dataset's own worker processes: pre-check, redirects, size cap, schemes."""
    from pipeline.config import recipe_from_dict
    from pipeline.runner import run

    urls = [f"{server}/ok.jpg", f"{server}/to-metadata", f"{server}/big-declared", "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data/", f"{server}/hop/9", f"{server}/missing"]
    pq.write_table(pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]}),
                   tmp_path / "urls.parquet")
    recipe = recipe_from_dict({
        "input": {"path": str(tmp_path / "urls.parquet")}, "workdir": str(tmp_path / "wd"),
        "executor": "local", "stages": ["download"],
        "download": {"processes": 1, "threads": 4, "timeout": 5, "allow_private": ["loopback"],
                     "max_redirects": 3, "max_image_bytes": 4000}})
    run(recipe, quiet=True)
    t = pq.read_table(tmp_path / "wd" / "download" / "00000.parquet").to_pylist()
    reasons = [r["download_reason"] for r in t]
    assert reasons == [None, "blocked_address", "too_large", "invalid_url", "blocked_address",
                       "too_many_redirects", "http_404"]
    assert t[0]["image"] == _Handler.image and t[0]["download_ok"]
    # Blocked rows never reached img2dataset: their URL is blank in its input copy.
    handed = pq.read_table(tmp_path / "wd" / "download_input" / "00000.parquet").column("url").to_pylist()
    assert handed[3] == "" and handed[4] == "" and handed[0] == urls[0]


def test_download_stage_refuses_loopback_without_the_switch(server, tmp_path: Path):
    from pipeline.config import recipe_from_dict
    from pipeline.runner import run

    pq.write_table(pa.table({"url": [f"{server}/ok.jpg", "http://localhost/x"], "caption": ["a", "b"]}),
                   tmp_path / "urls.parquet")
    run(recipe_from_dict({"input": {"path": str(tmp_path / "urls.parquet")}, "workdir": str(tmp_path / "wd"),
                          "executor": "local", "stages": ["download"],
                          "download": {"processes": 1, "threads": 2, "timeout": 5}}), quiet=True)
    t = pq.read_table(tmp_path / "wd" / "download" / "00000.parquet")
    assert t.column("download_reason").to_pylist() == ["blocked_address", "blocked_address"]
    assert "loopback" in t.column("download_error")[0].as_py()
