"""download: img2dataset fetches every URL; every input row comes back with bytes or a reason.

img2dataset runs over the input shards as they are (one input file per shard, same shard size),
so its output shard i holds exactly the uids of input shard i. Re-encoding is switched off: the
original bytes flow on and `annotate` decodes each image once, which is also where HTML served
as an image and truncated files are told apart.

Network safety (the URL list is untrusted input):
* Before img2dataset starts, each input shard is checked row by row without DNS: URLs whose host
  is a literal IP address (any spelling: `127.1`, `0x7f.1`, `2130706433`, `[::ffff:10.0.0.1]`) in
  a loopback, private, link-local, metadata, ... range (filters.netguard) are blanked in the copy
  handed to img2dataset (`download_input/`) and come back with reason `blocked_address`; URLs that
  are not http(s) (file://, ftp://, ...) are blanked as `invalid_url`. Host names are not resolved
  here (a billion rows would mean a billion look-ups on one machine, and the answer could change
  before the fetch anyway): the connect-time guard below judges what they resolve to.
* In img2dataset's worker processes a guarded urllib opener is installed for the duration of each
  shard. It checks the address of every connection it makes, initial request and every redirect
  alike, after resolving and before connecting, and then connects to that checked address, so a
  redirect to 127.0.0.1 or a DNS answer that changed since the pre-check is refused too. It
  follows at most `max_redirects` redirects, reads at most `max_image_bytes` of a body, and has
  no file/ftp/data handlers.
Not covered: an HTTP(S) proxy taken from the environment is what the guard sees as the peer (the
proxy resolves the real host), and there is no per-host concurrency limit beyond img2dataset's
thread count.
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from filters.netguard import BLOCKED_PREFIX, BLOCKED_REASON, check_ip, url_host_port
from pipeline import storage
from pipeline.config import DownloadConfig, Recipe
from pipeline.logs import third_party_output
from pipeline.stage import Resources, Stage
from pipeline.store import INPUT_DIR, ColumnStore, atomic_write_parquet, shard_name

log = logging.getLogger("mmcurate")
RAW_DIR = "download_raw"
GUARDED_DIR = "download_input"  # the input shards as img2dataset sees them (blocked URLs blanked)
_HTTP = re.compile(r"HTTP Error (\d{3})")
TOO_LARGE_PREFIX = "too_large:"
INVALID_PREFIX = "invalid_url:"


def classify_error(message: str | None) -> str:
    """img2dataset's free-text error → a short reason name that the manifest counts by."""
    if not message:
        return "download_error"
    if BLOCKED_PREFIX in message:
        return BLOCKED_REASON
    if TOO_LARGE_PREFIX in message:
        return "too_large"
    if INVALID_PREFIX in message:
        return "invalid_url"
    if "redirect error that would lead to an infinite loop" in message:
        return "too_many_redirects"
    m = _HTTP.search(message)
    if m:
        return f"http_{m.group(1)}"
    low = message.lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "unknown url type" in low or "no host given" in low or "nonetype" in low:
        return "invalid_url"
    if "refused" in low or "name or service not known" in low or "urlopen error" in low \
            or "reset by peer" in low or "remote end closed" in low:
        return "connection_error"
    return "download_error"


class DownloadStage(Stage):
    name = "download"
    provides = ("image", "download_ok", "download_reason", "download_error")

    def resources(self) -> Resources:
        return Resources(cpus=float(self.config.processes))

    # download is not mapped by an executor: img2dataset is its own distributed system.
    def run_all(self, store: ColumnStore, recipe: Recipe, ray_connected: bool) -> list[dict]:
        """One result per pending shard, like an executor's map_shards: a shard img2dataset could
        not finish carries an `error` (the runner records it and accounts its rows as failed)."""
        pending = store.pending(self.name)
        if not pending:
            return []
        raw = store.workdir / RAW_DIR
        stats = {f.name for f in storage.files(raw, "*_stats.json")}
        if any(f"{shard_name(s)}_stats.json" not in stats for s in pending):
            self._guard_inputs(store)
            self._img2dataset(store, recipe, raw, ray_connected)
        results: list[dict] = []
        for s in pending:
            try:
                atomic_write_parquet(self._convert(store, raw, s), store.path(self.name, s))
                results.append({"shard": s})
            except (OSError, RuntimeError, pa.ArrowException) as e:
                log.error("download: shard %d: %s", s, e)
                results.append({"shard": s, "error": f"{type(e).__name__}: {e}", "attempts": 1})
        return results

    def _guard_inputs(self, store: ColumnStore) -> None:
        """Write each input shard as img2dataset will read it: non-http(s) URLs and URLs to
        literal blocked addresses blanked, with the reason kept beside them for `_convert`. One
        shard at a time and no DNS: names are checked when the worker connects."""
        cfg: DownloadConfig = self.config
        out = store.workdir / GUARDED_DIR
        for s in store.shards():
            path = out / f"{shard_name(s)}.parquet"
            if path.exists():
                continue
            t = storage.read_table(store.path(INPUT_DIR, s), columns=["uid", "url", "caption"])
            urls = t.column("url").to_pylist()
            checked: dict[tuple[str, int], str | None] = {}
            guard = []
            for u in urls:
                hp = url_host_port(u)
                if hp is None:
                    guard.append(f"{INVALID_PREFIX} only http(s) URLs are downloaded" if u else None)
                    continue
                if hp not in checked:
                    checked[hp] = _check_literal_host(hp[0], hp[1], cfg.allow_private)
                guard.append(checked[hp])
            n_blocked = sum(g is not None and g.startswith(BLOCKED_PREFIX) for g in guard)
            if n_blocked:
                log.warning("download: shard %d: %d URLs point at non-public addresses and are "
                            "not fetched (reason %s)", s, n_blocked, BLOCKED_REASON)
            safe = pa.array(["" if g else u for u, g in zip(urls, guard)], pa.string())
            atomic_write_parquet(t.set_column(1, "url", safe).append_column(
                "guard_error", pa.array(guard, pa.string())), path)

    def _img2dataset(self, store: ColumnStore, recipe: Recipe, raw: Path, ray_connected: bool) -> None:
        from img2dataset import download

        cfg: DownloadConfig = self.config
        distributor = cfg.distributor
        if distributor == "auto":
            # A cluster (an address from the recipe, --ray-address or RAY_ADDRESS, as under
            # `ray job submit`) spreads downloads over its nodes; a local Ray does not need to.
            address = recipe.ray_address or os.environ.get("RAY_ADDRESS")
            distributor = "ray" if (ray_connected and address) else "multiprocessing"
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        log.info("download: img2dataset over %d shards (%s, %d processes x %d threads)",
                 store.n_shards, distributor, cfg.processes, cfg.threads)
        import sys

        # the package re-exports a function named `main`, hiding the module of the same name
        i2d_main = sys.modules["img2dataset.main"]

        # img2dataset builds its Downloader itself; wrap it so every worker process fetches
        # through the guarded opener (the wrapper is pickled into the workers with its settings).
        guard = {"allow": list(cfg.allow_private), "max_redirects": cfg.max_redirects,
                 "max_bytes": cfg.max_image_bytes}
        original = i2d_main.Downloader
        i2d_main.Downloader = lambda **kw: GuardedDownloader(original(**kw), guard)
        try:
            # img2dataset prints banners and its own bar; a quiet run keeps them in the run log
            # (its pool's processes write to this process's descriptors, which point there too)
            # and shows one bar of finished shards instead.
            with _shard_bar(raw, store.shards()), third_party_output():
                self._run_img2dataset(download, store, raw, distributor)
        finally:
            i2d_main.Downloader = original

    def _run_img2dataset(self, download, store: ColumnStore, raw: Path, distributor: str) -> None:
        cfg: DownloadConfig = self.config
        download(
            url_list=str(store.workdir / GUARDED_DIR), input_format="parquet", url_col="url",
            caption_col="caption", save_additional_columns=["uid"], output_format="parquet",
            output_folder=str(raw), processes_count=cfg.processes, thread_count=cfg.threads,
            number_sample_per_shard=store.meta["shard_size"], timeout=cfg.timeout, retries=cfg.retries,
            # Keep original bytes; decisions about size/aspect belong to select, not the downloader.
            resize_mode="no", disable_all_reencoding=True, min_image_size=0,
            max_aspect_ratio=float("inf"), incremental_mode="incremental", enable_wandb=False,
            distributor=distributor, user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=None if cfg.respect_robots_headers else [],
            compute_hash=None, verify_hash=None,
        )

    def _convert(self, store: ColumnStore, raw: Path, shard: int) -> pa.Table:
        uids = storage.read_table(store.path(INPUT_DIR, shard), columns=["uid"]).column("uid")
        path = raw / f"{shard_name(shard)}.parquet"
        if not path.exists():
            raise RuntimeError(f"img2dataset wrote no {path}; delete {raw} and re-run the download stage")
        t = storage.read_table(path, columns=["uid", "status", "error_message", "jpg"])
        t = t.sort_by("uid")
        got = t.column("uid")
        # Rows the downloader did not return are accounted for, never dropped.
        if not got.equals(uids):
            t = _align(t, uids)
        ok = pc.equal(t.column("status"), "success")
        ok = pc.fill_null(ok, False)
        errors = t.column("error_message").to_pylist()
        guarded = store.workdir / GUARDED_DIR / f"{shard_name(shard)}.parquet"
        if guarded.exists():  # the pre-check's reason replaces img2dataset's "unknown url type"
            g = storage.read_table(guarded, columns=["uid", "guard_error"])
            if g.column("uid").equals(uids):
                guard = g.column("guard_error").to_pylist()
                errors = [ge or e for ge, e in zip(guard, errors)]
                ok = pa.array([o and ge is None for o, ge in zip(ok.to_pylist(), guard)], pa.bool_())
        reasons = [None if o else classify_error(e) for o, e in zip(ok.to_pylist(), errors)]
        image = pc.if_else(ok, t.column("jpg").cast(pa.binary()), pa.scalar(None, pa.binary()))
        return pa.table({"uid": uids, "image": image, "download_ok": ok,
                         "download_reason": pa.array(reasons, pa.string()),
                         "download_error": pa.array([None if o else (e or "no response") for o, e in
                                                     zip(ok.to_pylist(), errors)], pa.string())})


@contextlib.contextmanager
def _shard_bar(raw: Path, shards: list[int]) -> Iterator[None]:
    """A progress bar over the shards img2dataset has still to fetch: it writes a shard's
    `_stats.json` when the shard is done."""
    def finished() -> set[str]:  # one listing, not one request a shard (an object store bills both)
        return {p.name for p in storage.files(raw, "*_stats.json")}

    todo = {f"{shard_name(s)}_stats.json" for s in shards} - finished()
    stop = threading.Event()
    every = 5.0 if storage.is_remote(raw) else 0.5
    with tqdm(total=len(todo), desc="download", unit="shard") as bar:
        def watch() -> None:
            while not stop.wait(every):
                bar.update(len(todo & finished()) - bar.n)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
            bar.update(len(todo & finished()) - bar.n)


def _check_literal_host(host: str, port: int, allow: Iterable[str]) -> str | None:
    """check_ip for a host written as an IP address, in every spelling the connecting side
    accepts (AI_NUMERICHOST parses them as the connect would and never queries DNS); None for
    a name, which the connect-time guard judges."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    for *_x, sa in infos:
        msg = check_ip(sa[0], allow)
        if msg:
            return f"{msg} (host {host!r})"
    return None


def _align(t: pa.Table, uids: pa.ChunkedArray) -> pa.Table:
    by_uid = {u: i for i, u in enumerate(t.column("uid").to_pylist())}
    idx = [by_uid.get(u) for u in uids.to_pylist()]
    cols = {}
    for name in ("status", "error_message", "jpg"):
        col = t.column(name).to_pylist()
        cols[name] = [col[i] if i is not None else None for i in idx]
    cols["status"] = [s if i is not None else "missing" for s, i in zip(cols["status"], idx)]
    cols["error_message"] = [e if i is not None else "row missing from the downloader's output"
                             for e, i in zip(cols["error_message"], idx)]
    return pa.table({"uid": uids, "status": pa.array(cols["status"], pa.string()),
                     "error_message": pa.array(cols["error_message"], pa.string()),
                     "jpg": pa.array(cols["jpg"], pa.binary())})


# ---- the guarded opener used inside img2dataset's worker processes ---------------------------

class BlockedAddressError(OSError):
    """Raised before connecting to a refused address; urllib wraps it into a URLError."""


def _guarded_connect(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                     source_address: tuple[str, int] | None = None, *, allow: Iterable[str] = (),
                     **_: Any) -> socket.socket:
    """socket.create_connection that checks every resolved address first and then connects to
    exactly those addresses, so the name cannot resolve differently between check and connect."""
    host, port = address[0], address[1]
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for *_x, sa in infos:
        msg = check_ip(sa[0], allow)
        if msg:
            raise BlockedAddressError(f"{msg} (host {host!r})")
    err: OSError | None = None
    for family, type_, proto, _c, sa in infos:
        sock = socket.socket(family, type_, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            return sock
        except OSError as e:
            err = e
            sock.close()
    raise err or OSError(f"getaddrinfo returned no addresses for {host!r}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allow: Iterable[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connect, allow=tuple(allow))


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, allow: Iterable[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connect, allow=tuple(allow))


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow: Iterable[str]):
        super().__init__()
        self.allow = tuple(allow)

    def http_open(self, req):  # noqa: ANN001 - urllib's signature
        return self.do_open(functools.partial(_GuardedHTTPConnection, allow=self.allow), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow: Iterable[str]):
        super().__init__()
        self.allow = tuple(allow)

    def https_open(self, req):  # noqa: ANN001
        return self.do_open(functools.partial(_GuardedHTTPSConnection, allow=self.allow), req,
                            context=self._context)


class _LimitedRedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        # urllib always follows the first redirect; a limit of 0 must refuse it.
        if self.max_redirections == 0:
            raise urllib.error.HTTPError(req.full_url, code, self.inf_msg + msg, headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _CappedResponse:
    """The response with read() bounded: a body larger than the cap is an error, not memory."""

    def __init__(self, resp: Any, cap: int):
        self._resp, self._cap = resp, cap

    def read(self, amt: int | None = None) -> bytes:
        want = self._cap + 1 if amt is None or amt < 0 else min(amt, self._cap + 1)
        data = self._resp.read(want)
        if amt is None and len(data) > self._cap:
            raise urllib.error.URLError(f"{TOO_LARGE_PREFIX} body is larger than max_image_bytes={self._cap}")
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resp, name)

    def __enter__(self) -> "_CappedResponse":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._resp.close()


class _SizeLimitProcessor(urllib.request.BaseHandler):
    handler_order = 999  # before HTTPErrorProcessor, so each response is wrapped once

    def __init__(self, cap: int):
        self.cap = cap

    def http_response(self, req, resp):  # noqa: ANN001
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.cap:
            resp.close()
            raise urllib.error.URLError(f"{TOO_LARGE_PREFIX} Content-Length {length} is larger than "
                                        f"max_image_bytes={self.cap}")
        return _CappedResponse(resp, self.cap)

    https_response = http_response


def build_guarded_opener(allow: Iterable[str] = (), max_redirects: int = 5,
                         max_bytes: int | None = None) -> urllib.request.OpenerDirector:
    """An opener with http(s) only (no file/ftp/data), address checks on every connection,
    bounded redirects and bounded body size."""
    opener = urllib.request.OpenerDirector()
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(), _LimitedRedirectHandler(max_redirects),
        urllib.request.HTTPErrorProcessor(), _GuardedHTTPHandler(allow), _GuardedHTTPSHandler(allow)]
    if max_bytes:
        handlers.append(_SizeLimitProcessor(max_bytes))
    for h in handlers:
        opener.add_handler(h)
    return opener


class GuardedDownloader:
    """img2dataset's Downloader, run with the guarded opener installed in the worker process.

    img2dataset calls `urllib.request.urlopen`, which uses the process-wide installed opener; the
    previous one is put back afterwards because a Ray worker process may run other tasks later.
    """

    def __init__(self, inner: Any, guard: dict[str, Any]):
        self.inner, self.guard = inner, guard

    def __call__(self, row: Any) -> Any:
        previous = getattr(urllib.request, "_opener", None)
        urllib.request.install_opener(build_guarded_opener(**self.guard))
        try:
            return self.inner(row)
        finally:
            urllib.request.install_opener(previous)
