"""The stage contract every executor drives.

A stage is plain Python over Arrow tables. It reads the columns it `needs` (from the run's
column store: the input list plus every earlier stage's outputs, row-aligned by `uid`), and
returns only the columns it adds, one output row per input row, in the same order. Stages never
drop rows: a bad sample becomes a value in a column (an error string, a flag), and only `select`
turns columns into decisions.

Shard-wise stages implement `process`. Stages that need a global view first (dedup, percentile
thresholds) also implement `prepare`, which runs once on the driver before the shards are mapped
and returns a small picklable state handed to every worker's `setup`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import ColumnStore


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks for. Executors size their pools from it."""

    cpus: float = 1.0
    gpus: float = 0.0
    batch_size: int = 256
    # Upper bound on concurrent workers (None: as many as the cluster's resources allow).
    max_workers: int | None = None


class Stage:
    name: ClassVar[str] = ""
    # Columns read from the store; "uid" is always provided.
    needs: ClassVar[tuple[str, ...]] = ()
    # Columns used when an earlier stage produced them (e.g. a cleaned caption), absent otherwise.
    optional: ClassVar[tuple[str, ...]] = ()
    # Columns this stage adds (checked by the runner, so a stage can't silently drop or rename).
    provides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, run: "RunContext"):
        self.config = config
        self.run = run

    @classmethod
    def fingerprint_extra(cls, recipe: Any) -> dict[str, Any]:
        """What this stage's output depends on beyond its own recipe section (pipeline/
        fingerprint.py); e.g. the run's seed for a stage that samples."""
        return {}

    # ---- lifecycle -------------------------------------------------------------------------
    def resources(self) -> Resources:
        return Resources()

    def needed_columns(self, available: Sequence[str]) -> Sequence[str]:
        """Columns to read, given what earlier stages produced; override when needs vary."""
        return self.needs

    def prepare(self, store: "ColumnStore") -> Any:
        """Global pass on the driver; the return value reaches `setup` on every worker."""
        return None

    def setup(self, state: Any) -> None:
        """Load models and build indexes; runs once per worker, before any `process`."""

    def process(self, batch: pa.Table) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError(f"stage {self.name!r} does not implement process()")


@dataclass
class RunContext:
    """What a stage may know about the run it is part of (paths, seed, recipe)."""

    workdir: str
    recipe: Any
    seed: int = 0
