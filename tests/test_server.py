"""The loopback corpus server: each fault kind answers as labelled; slow paths block nothing."""
from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from synth.corpus import generate_corpus
from synth.noise import NoiseRates
from synth.server import CorpusServer

RATES = NoiseRates().override({
    "tiny": 0.05, "extreme_aspect": 0.05, "exact_dup": 0.05, "near_dup": 0.05, "corrupt": 0.05,
    "truncated": 0.05, "html": 0.05, "http_404": 0.05, "http_500": 0.05, "slow": 0.05,
    "timeout": 0.05,
    # Short slow delay keeps the test quick; the timeout delay is long on purpose: those
    # requests must still be in flight when the server stops.
    "slow_delay": 0.2, "timeout_delay": 120.0,
})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("served")
    generate_corpus(out, n_rows=80, seed=5, rates=RATES, n_test=0)
    labels = pq.read_table(out / "labels.parquet").to_pylist()
    return out, labels


@pytest.fixture()
def server(corpus):
    with CorpusServer(corpus[0]) as srv:
        yield srv


def _get(url: str, timeout: float = 10) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def _first(labels, label):
    return next(r for r in labels if r["labels"] and r["labels"][0] == label)


def test_each_fault_kind(corpus, server):
    out, labels = corpus
    routes = json.loads((out / "server.json").read_text())["routes"]
    file_of = lambda r: (out / routes[r["path"]]["file"]).read_bytes()

    clean = next(r for r in labels if r["label"] == "clean")
    status, ctype, body = _get(server.rebase(clean["url"]))
    assert status == 200 and ctype == f"image/{clean['image_format']}" and body == file_of(clean)

    assert _get(server.rebase(_first(labels, "http_404")["url"]))[0] == 404
    assert _get(server.rebase(_first(labels, "http_500")["url"]))[0] == 500

    html = _first(labels, "html")
    status, ctype, body = _get(server.rebase(html["url"]))
    assert status == 200 and ctype == "image/jpeg" and body.lower().startswith(b"<!doctype html")

    for kind in ("corrupt", "truncated", "tiny", "exact_dup", "near_dup"):
        row = _first(labels, kind)
        status, ctype, body = _get(server.rebase(row["url"]))
        assert status == 200 and ctype.startswith("image/") and body == file_of(row), kind

    slow = _first(labels, "slow")
    status, _, body = _get(server.rebase(slow["url"]))
    assert status == 200 and body == file_of(slow)

    assert _get(server.url + "/no/such/image.jpg")[0] == 404


def test_head_and_query_string(corpus, server):
    _, labels = corpus
    clean = next(r for r in labels if r["label"] == "clean")
    req = urllib.request.Request(server.rebase(clean["url"]), method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and int(resp.headers["Content-Length"]) > 0
        assert resp.read() == b""
    assert _get(server.rebase(clean["url"]) + "?w=300")[0] == 200


def test_timeout_path_blocks_nothing_and_stop_is_prompt(corpus):
    _, labels = corpus
    timeout_row = _first(labels, "timeout")
    clean = [r for r in labels if r["label"] == "clean"][:5]
    srv = CorpusServer(corpus[0]).start()
    slow_done = threading.Event()
    slow_result: list = []

    def fetch_slow():
        try:
            slow_result.append(_get(srv.rebase(timeout_row["url"]), timeout=300))
        except Exception as e:  # connection dropped on stop: expected
            slow_result.append(e)
        slow_done.set()

    slow_threads = [threading.Thread(target=fetch_slow, daemon=True) for _ in range(3)]
    for t in slow_threads:
        t.start()
    try:
        # Fast requests issued after the (120 s) slow ones complete while those are in flight.
        for r in clean:
            assert _get(srv.rebase(r["url"]))[0] == 200
        assert not slow_done.is_set()
    finally:
        srv.stop()
    for t in slow_threads:
        t.join(timeout=15)
        assert not t.is_alive(), "stop() left a delayed response hanging"
    assert slow_result and all(not (isinstance(x, tuple) and x[0] == 200) for x in slow_result)


def test_many_concurrent_connections(corpus, server):
    _, labels = corpus
    ok = [r for r in labels if r["label"] == "clean"]
    urls = [server.rebase(ok[i % len(ok)]["url"]) for i in range(200)]
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(lambda u: _get(u)[0], urls))
    assert statuses == [200] * 200


def test_loopback_only_and_lifecycle(corpus, tmp_path):
    out, labels = corpus
    for host in ("0.0.0.0", "8.8.8.8", "example.com", ""):
        with pytest.raises(ValueError, match="loopback"):
            CorpusServer(out, host=host)
    with pytest.raises(FileNotFoundError, match="server.json"):
        CorpusServer(tmp_path)
    srv = CorpusServer(out)
    with pytest.raises(RuntimeError, match="not started"):
        srv.port
    with srv:
        assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}"
        with pytest.raises(RuntimeError, match="already started"):
            srv.start()
    srv.stop()  # second stop is harmless
    # The corpus's own port is the default of `mmcurate serve` (port=None).
    assert CorpusServer(out, port=None).configured_port == 8731


def test_serve_forever_stops_from_another_thread(corpus):
    out, labels = corpus
    with socket.socket() as s:  # pick a free port up front so the URL is known
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = CorpusServer(out, port=port)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    clean = next(r for r in labels if r["label"] == "clean")
    for _ in range(100):  # wait until bound
        try:
            status = _get(f"http://127.0.0.1:{port}" + clean["path"])[0]
            break
        except urllib.error.URLError:
            threading.Event().wait(0.05)
    assert status == 200
    srv.stop()
    t.join(timeout=10)
    assert not t.is_alive()
