"""The download pre-check runs on the driver over every row: it must not resolve host names (the
connect-time guard in the worker judges what a name resolves to), and it still refuses URLs whose
host is a blocked address written as a literal, in any spelling."""
import socket

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import recipe_from_dict
from pipeline.ingest import ingest
from pipeline.registry import build_stage
from pipeline.store import ColumnStore

URLS = {
    "http://127.0.0.1/a.jpg": "loopback", "http://2130706433/a.jpg": "loopback", "http://0x7f.1/a.jpg": "loopback",
    "http://127.1:8080/a.jpg": "loopback", "http://[::ffff:10.0.0.1]/a.jpg": "private",
    "http://169.254.169.254/latest/meta-data/": "metadata", "http://[fe80::1]/x": "link_local",
    "https://10.1.2.3/x.png": "private", "http://93.184.216.34/ok.jpg": None,
    "http://localhost/x.jpg": None, "https://images.example.com/x.jpg": None,  # names: judged at connect
    "file:///etc/passwd": "invalid", "ftp://10.0.0.1/x": "invalid", "": None,
}


def test_precheck_blocks_literal_addresses_without_dns(tmp_path, monkeypatch):
    urls = list(URLS)
    pq.write_table(pa.table({"url": urls, "caption": ["c"] * len(urls)}), tmp_path / "u.parquet")
    recipe = recipe_from_dict({"input": {"path": str(tmp_path / "u.parquet")}, "workdir": str(tmp_path / "wd"),
                               "shard_size": 5, "stages": ["download"], "download": {"processes": 1}})
    ingest(recipe.input, tmp_path / "wd", recipe.shard_size)
    lookups = []
    real = socket.getaddrinfo

    def no_dns(host, port, family=0, type=0, proto=0, flags=0):
        if not flags & socket.AI_NUMERICHOST:
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "the pre-check must not resolve names")
        return real(host, port, family, type, proto, flags)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    build_stage("download", recipe)._guard_inputs(ColumnStore(tmp_path / "wd", ["download"]))
    assert lookups == []
    t = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "wd" / "download_input").glob("*.parquet")))
    assert t.column("uid").to_pylist() == list(range(len(urls)))
    for url, want, handed, err in zip(urls, URLS.values(), t.column("url").to_pylist(),
                                      t.column("guard_error").to_pylist()):
        if want is None:
            assert err is None and handed == url, url
        elif want == "invalid":
            assert err.startswith("invalid_url:") and handed == "", url
        else:
            assert err.startswith("blocked_address:") and f"a {want} address" in err and handed == "", url
