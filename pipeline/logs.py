"""Where a command's output goes.

Quiet (the default for `mmcurate run`, `demo` and `bootstrap`): the console shows mmcurate's own
lines (what it prints, its warnings and errors) and one progress bar per stage. Everything else
goes to WORKDIR/logs/run.log: third-party banners (img2dataset), Ray's own log records and the
messages it relays (task retries, actor restarts), what worker processes print (decoder
warnings such as libtiff's), C-level output (Ray's glog lines), Python warnings, and every
logging record at INFO and above, mmcurate's included. `--verbose` leaves all of it on the
console, as without this module; the log file then holds the logging records only.

How: the process's file descriptors 1 and 2 are pointed at the log, so C libraries and child
processes (img2dataset's pool, a local Ray's daemons) write there, while Python's sys.stdout and
sys.stderr keep writing to the terminal through duplicates of the original descriptors. Python
code that prints banners in this process is wrapped in `third_party_output`, and Ray, which
prints what its workers write from its own threads in the driver, is sent to the log by
`route_ray`.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

LOG_FILE = Path("logs") / "run.log"
# Loggers whose warnings belong on the console (mmcurate's own); the rest stay in the log.
PROJECT_LOGGERS = ("mmcurate", "pipeline", "stages", "models", "filters", "synth")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


@dataclass
class _Capture:
    path: Path
    stream: TextIO
    verbose: bool
    file_handler: logging.Handler
    undo: list[Callable[[], None]] = field(default_factory=list)


_active: _Capture | None = None


def log_path(workdir: str | Path) -> Path:
    """The log file this process writes: WORKDIR/logs/run.log, or for a workdir on an object
    store (which cannot append) a local copy that `capture` uploads there when the command ends."""
    from pipeline import storage

    return storage.local_dir(workdir) / LOG_FILE


class _ProjectOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in PROJECT_LOGGERS


def _backed_by(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # pytest's capture, StringIO: not a descriptor
        return False


def _swap_descriptors(stream: TextIO, cap: _Capture) -> None:
    """Point fds 1 and 2 at the log; sys.stdout / sys.stderr that wrote to them get a duplicate
    of the terminal's descriptor instead."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        current = getattr(sys, name)
        current.flush()
        saved = os.dup(fd)
        console = None
        if _backed_by(current, fd):
            console = os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(current, "encoding", None),
                                errors="replace")
            setattr(sys, name, console)
        os.dup2(stream.fileno(), fd)

        def undo(fd=fd, name=name, current=current, saved=saved, console=console) -> None:
            if console is not None:
                console.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if console is not None:
                setattr(sys, name, current)
                console.close()
        cap.undo.append(undo)


def console_handler(verbose: bool) -> logging.Handler:
    """Logging on the terminal (sys.stderr as it is now): every INFO record when verbose, else
    mmcurate's own warnings and errors only."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    if verbose:
        console.setLevel(logging.INFO)
    else:
        console.setLevel(logging.WARNING)
        console.addFilter(_ProjectOnly())
    return console


def _configure_logging(cap: _Capture) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = [cap.file_handler, console_handler(cap.verbose)]  # after the swap: the terminal
    root.setLevel(logging.INFO)
    if not cap.verbose:
        logging.captureWarnings(True)  # warnings.warn from libraries: to the log, via py.warnings

    def undo() -> None:
        logging.captureWarnings(False)
        root.handlers = handlers
        root.setLevel(level)
    cap.undo.append(undo)


@contextlib.contextmanager
def capture(workdir: str | Path, verbose: bool = False) -> Iterator[Path]:
    """For one CLI command: send third-party output to WORKDIR/logs/run.log (appended to, so a
    resumed run keeps the earlier attempts). Yields the log's path."""
    global _active
    if _active is not None:  # an outer command already captures
        yield _active.path
        return
    from pipeline import storage

    path = log_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    remote = storage.wpath(workdir) / LOG_FILE.as_posix() if storage.is_remote(workdir) else None
    if remote is not None and not path.exists() and remote.exists():
        path.write_bytes(remote.read_bytes())  # a resume elsewhere continues the earlier log
    stream = open(path, "a", encoding="utf-8", errors="replace", buffering=1)
    file_handler = logging.StreamHandler(stream)
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    cap = _Capture(path=path, stream=stream, verbose=verbose, file_handler=file_handler)
    try:
        if not verbose:
            _swap_descriptors(stream, cap)
        _configure_logging(cap)
        _active = cap
        yield remote if remote is not None else path
    finally:
        _active = None
        for undo in reversed(cap.undo):
            undo()
        stream.close()
        if remote is not None:
            try:
                storage.publish_copy(path, remote)
            except OSError as e:
                print(f"warning: could not upload the log to {remote}: {e}; it stays at {path}", file=sys.stderr)


@contextlib.contextmanager
def third_party_output() -> Iterator[None]:
    """While quiet: what Python code prints to sys.stdout / sys.stderr in this block (a library's
    banners and own progress bars) goes to the log. Create your own progress bar before it."""
    cap = _active
    if cap is None or cap.verbose:
        yield
        return
    with contextlib.redirect_stdout(cap.stream), contextlib.redirect_stderr(cap.stream):
        yield


def route_ray() -> None:
    """While quiet, call right before ray.init: Ray's loggers, and the worker output and error
    messages Ray prints in the driver, go to the log. (Ray prints those from its own threads
    through `ray._private.worker.print_to_stdstream`, looked up when it prints.)"""
    cap = _active
    if cap is None or cap.verbose:
        return
    # ray.init(configure_logging=False) clears the "ray" logger's handlers, which leaves its
    # warnings to logging's last-resort handler (the terminal); propagating sends them to ours.
    ray_logger = logging.getLogger("ray")
    handlers, propagate = ray_logger.handlers[:], ray_logger.propagate
    ray_logger.handlers, ray_logger.propagate = [], True

    def undo_logger() -> None:
        ray_logger.handlers, ray_logger.propagate = handlers, propagate
    cap.undo.append(undo_logger)

    import ray._private.worker as ray_worker
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_mmcurate", False):
        return

    def to_log(data: dict, ignore_prefix: bool = False, **kw: Any) -> None:
        now = _active
        if now is None or now.verbose:  # a Ray session that outlived the command
            return original(data, ignore_prefix=ignore_prefix, **kw)
        pid, lines = data.get("pid"), data.get("lines", [])
        if pid in ("autoscaler", "raylet"):
            prefix = f"({pid}) "
            if pid == "autoscaler":  # its periodic status dumps, less the events, as Ray does
                lines = list(getattr(ray_worker, "filter_autoscaler_events", lambda ls: ls)(lines))
        else:
            who = data.get("actor_name") or data.get("task_name")
            prefix = f"({who} pid={pid}) " if who else f"(pid={pid}) "
        now.stream.write("".join(f"{'' if ignore_prefix else prefix}{line}\n" for line in lines))

    to_log._mmcurate = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def add_verbose_flag(parser: Any) -> None:
    """`--verbose` on a command that captures (run, demo, bootstrap). Suppressed default: the
    top-level `mmcurate -v` sets the same attribute."""
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=f"show third-party output (img2dataset, Ray, worker warnings) on the "
                        f"console too; it always goes to WORKDIR/{LOG_FILE.as_posix()}")
