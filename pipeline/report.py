"""The HTML run report: one self-contained page (inline CSS and SVG, no scripts) plus a folder of
small JPEG thumbnails beside it.

Sections: the funnel (rows per stage, per decision and reason), score / shape / caption-length
histograms, sample thumbnails per reason, CapFilt before/after captions, and metrics across
bootstrap rounds. A section whose data the run does not have is replaced by a short note.

Captions and every other string taken from the run are hostile web text: all of it goes through
`html.escape` (see `_e`), and nothing from the data reaches a tag name, attribute name or style.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pipeline import storage

from filters.image_tags import TAG_RULES, UNSCORED
from pipeline.report_sample import MAX_ROWS, Totals, group_key, load_rows
from pipeline.report_svg import PALETTE, hbar_chart, histogram, line_plot
from pipeline.report_thumbs import PLACEHOLDERS, Thumb, write_thumbs
from pipeline.store import stage_dir

log = logging.getLogger("mmcurate")

# Columns never loaded for the report: bytes and vectors are large and not shown.
SKIP_COLS = ("image", "jpg")
NOT_STAGE_DIRS = {"download_raw", "export", "report"}
DECISION_ORDER = ("kept", "rejected", "failed")
CAPTION_SHOW = 220
CAPFILT_ROWS = 12
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _clean_text(text: Any, limit: int = CAPTION_SHOW) -> tuple[str, str]:
    """(shown, full): control and bidi-override characters removed (they can reorder or hide
    the text around them), long text cut; both still need escaping."""
    if text is None:
        return "", ""
    full = _CONTROL.sub("", str(text))
    shown = full if len(full) <= limit else full[:limit] + "…"
    return shown, full


@dataclass
class RunData:
    run_dir: Path
    summary: dict | None
    rows: pa.Table | None  # one row per input row (or a sample of them): manifest or joined stage outputs
    source: str
    notes: list[str] = field(default_factory=list)
    n_rows: int | None = None  # rows in the run; more than `rows` holds when that is a sample
    totals: Totals | None = None  # exact counts over every row, when `rows` is a sample

    def __post_init__(self) -> None:
        if self.n_rows is None:
            self.n_rows = self.rows.num_rows if self.rows is not None else 0

    def count_true(self, name: str) -> int:
        """Rows where the column is true: over every row of the run, also when `rows` is a sample."""
        if self.totals is not None and name in self.totals.true:
            return self.totals.true[name]
        return int(sum(1 for v in self.col(name) if v))

    def has(self, *cols: str) -> bool:
        return self.rows is not None and all(c in self.rows.column_names for c in cols)

    def col(self, name: str) -> list:
        return self.rows.column(name).to_pylist()

    def num(self, name: str) -> np.ndarray:
        """The column as floats (null -> NaN); all NaN, with a note, when it is not numeric."""
        try:
            c = pc.cast(self.rows.column(name), pa.float64(), safe=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            self.notes.append(f"column `{name}` is {self.rows.schema.field(name).type}, not numeric: not plotted")
            return np.full(self.rows.num_rows, math.nan)
        return np.asarray(pc.fill_null(c, math.nan).to_numpy(zero_copy_only=False), dtype=float)


# ---- loading ---------------------------------------------------------------------------------

def _read_file(f: Path, notes: list[str]) -> pa.Table | None:
    try:
        schema = storage.read_schema(f)
        # Bytes (images, signatures such as near_sig) are never shown and are most of a row.
        keep = [x.name for x in schema if x.name not in SKIP_COLS and not x.name.endswith("_emb")
                and not (pa.types.is_binary(x.type) or pa.types.is_large_binary(x.type)
                         or pa.types.is_fixed_size_binary(x.type))]
        return storage.read_table(f, columns=keep)
    except (pa.ArrowException, OSError) as e:
        notes.append(f"could not read {f} ({e.__class__.__name__}: {e}); its rows are missing from this report")
        return None


def _n_rows(files: list[Path]) -> int:
    n = 0
    for f in files:
        try:
            n += storage.parquet_file(f).metadata.num_rows
        except (pa.ArrowException, OSError):
            pass
    return n


def _iter_dir(files: list[Path], notes: list[str]) -> Iterator[pa.Table]:
    for f in files:
        t = _read_file(f, notes)
        if t is not None:
            yield t


def _stage_order(run_dir: Path) -> list[str]:
    try:
        stages = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))["stages"]
        return [s for s in stages if (run_dir / stage_dir(s)).is_dir()]
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(p.name for p in run_dir.iterdir() if p.is_dir() and p.name not in NOT_STAGE_DIRS
                      and not p.name.startswith(("round_", "_")) and p.name != "input")


def _join_stages(run_dir: Path, notes: list[str]) -> Iterator[pa.Table]:
    """Without a manifest (export has not run), every stage's columns joined on uid, one input
    shard at a time (each stage writes its shard under the input shard's file name)."""
    stages = _stage_order(run_dir)
    for f in sorted((run_dir / "input").glob("*.parquet")):
        base = _read_file(f, notes)
        if base is None or "uid" not in base.column_names:
            continue
        for stage in stages:
            sf = run_dir / stage_dir(stage) / f.name
            t = _read_file(sf, notes) if sf.exists() else None
            if t is None or "uid" not in t.column_names:
                continue
            new = [c for c in t.column_names if c != "uid" and c not in base.column_names]
            if new:
                # Positional take, not Table.join: Acero's join rejects list columns (captions, words).
                pos = pc.index_in(base.column("uid"), value_set=t.column("uid"))
                for c in new:
                    base = base.append_column(t.schema.field(c), t.column(c).take(pos))
        yield base.sort_by("uid")


def _data_dir(run_dir: Path) -> tuple[Path, str | None]:
    """The folder holding the run's outputs: RUN_DIR itself, or for a bootstrap folder with no
    outputs of its own, the last round that has some."""
    def has_run(d: Path) -> bool:
        return (d / "summary.json").exists() or (d / "export" / "manifest").is_dir() or (d / "input").is_dir()

    if has_run(run_dir):
        return run_dir, None
    for _, rd in reversed(_round_dirs(run_dir)):
        for cand in (rd, rd / "run"):
            if has_run(cand):
                return cand, f"{run_dir} holds bootstrap rounds; the sections below show {cand}"
    return run_dir, None


def load_run(run_dir: str | Path, per_reason: int = 6, max_rows: int | None = None) -> RunData:
    """The run's summary and rows: all rows up to `max_rows` (default report_sample.MAX_ROWS),
    else a sample with exact counts (pipeline/report_sample.py). One file or shard is read at
    a time."""
    root = storage.wpath(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist; pass the recipe's workdir")
    data_dir, note = _data_dir(root)
    notes = [note] if note else []
    summary = None
    sp = data_dir / "summary.json"
    if sp.exists():
        try:
            summary = json.loads(sp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            notes.append(f"{sp} could not be read ({e}); the funnel uses the row data only")
    limit = MAX_ROWS if max_rows is None else max_rows
    manifest = sorted((data_dir / "export" / "manifest").glob("*.parquet"))
    rows, totals, source = None, None, "export manifest"
    try:
        has_uid = bool(manifest) and "uid" in storage.read_schema(manifest[0]).names
    except (pa.ArrowException, OSError):
        has_uid = False
    if has_uid:
        rows, totals = load_rows(_iter_dir(manifest, notes), _n_rows(manifest), limit, per_reason)
        if rows is not None and rows.num_rows:
            # The export's one schema holds a stage that did not run as typed-null columns.
            rows = rows.drop_columns([c for c in rows.column_names
                                      if c != "uid" and rows.column(c).null_count == rows.num_rows])
    if rows is None or "uid" not in rows.column_names:
        source = "stage outputs (no export manifest)"
        rows, totals = load_rows(_join_stages(data_dir, notes), _n_rows(sorted((data_dir / "input").glob("*.parquet"))),
                                 limit, per_reason)
    if rows is None:
        source = "none"
        notes.append(f"{data_dir} holds no manifest or stage outputs; only bootstrap rounds (if any) are shown")
    if totals is not None:
        notes.append(f"distributions and samples come from {totals.sampled:,} of the run's {totals.rows:,} rows "
                     f"(a uniform sample plus the first {per_reason} rows of every reason); counts are over every row")
    return RunData(data_dir, summary, rows, source, notes, totals.rows if totals else None, totals)


# ---- sections --------------------------------------------------------------------------------

def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _decision_counts(data: RunData) -> tuple[dict[str, dict[str, int]], str]:
    """decision -> reason -> count: from summary.json (the checked accounting), else the rows."""
    s = data.summary or {}
    if "rejected_by_reason" in s and "failed_by_reason" in s and "kept" in s:
        return {"kept": {"kept": int(s["kept"])} if s["kept"] else {},
                "rejected": dict(s["rejected_by_reason"]), "failed": dict(s["failed_by_reason"])}, "summary.json"
    if data.totals is not None:
        return {d: dict(v) for d, v in data.totals.decisions.items()}, "every row"
    out: dict[str, dict[str, int]] = {}
    if data.has("decision"):
        reasons = data.col("reason") if data.has("reason") else [None] * data.rows.num_rows
        for d, r in zip(data.col("decision"), reasons):
            d = d or "undecided"
            key = "kept" if d == "kept" else (r or d)
            out.setdefault(d, {})
            out[d][key] = out[d].get(key, 0) + 1
    return out, "the row data"


def _stage_rows(data: RunData) -> list[tuple[str, int, int, Any]]:
    seconds = (data.summary or {}).get("stage_seconds") or {}
    out = []
    for stage in ["input", *_stage_order(data.run_dir)]:
        files = sorted((data.run_dir / stage_dir(stage)).glob("*.parquet"))
        n = 0
        for f in files:
            try:
                n += storage.parquet_file(f).metadata.num_rows
            except (pa.ArrowException, OSError):
                pass
        out.append((stage, len(files), n, seconds.get(stage, "")))
    return out


def section_funnel(data: RunData) -> str:
    parts = []
    counts, origin = _decision_counts(data)
    n_input = (data.summary or {}).get("input") or data.n_rows
    if data.summary:
        s = data.summary
        ok = s.get("balanced")
        parts.append(f'<p class="acct {"ok" if ok else "bad"}">input {_e(s.get("input"))} = kept {_e(s.get("kept"))}'
                     f' + rejected {_e(s.get("rejected"))} + failed {_e(s.get("failed"))} '
                     f'<b>[{"balanced" if ok else "MISMATCH"}]</b></p>')
    else:
        parts.append(_note("no summary.json (select has not finished): counts come from the row data"))
    stages = _stage_rows(data)
    if stages:
        parts.append("<h3>Rows per stage</h3>" + _table(
            ["stage", "shards written", "rows", "seconds"], stages, "num"))
    steps: list[tuple[str, int]] = [("input", int(n_input))]
    if data.has("download_ok"):
        steps.append(("downloaded", data.count_true("download_ok")))
    if data.has("decode_ok"):
        steps.append(("decoded", data.count_true("decode_ok")))
    if counts:
        steps.append(("kept", sum(counts.get("kept", {}).values())))
    if data.has("exported"):
        steps.append(("exported", data.count_true("exported")))
    elif isinstance((data.summary or {}).get("exported"), int):
        steps.append(("exported", data.summary["exported"]))
    if len(steps) > 1:
        parts.append("<h3>Funnel</h3>" + hbar_chart(steps, total=n_input, label="funnel"))
    if counts:
        parts.append(f"<h3>Decisions and reasons</h3><p class='src'>from {_e(origin)}</p>")
        rows = []
        for i, d in enumerate(sorted(counts, key=lambda d: DECISION_ORDER.index(d) if d in DECISION_ORDER else 9)):
            items = sorted(counts[d].items(), key=lambda kv: -kv[1])
            if not items:
                continue
            parts.append(f"<h4>{_e(d)} ({sum(counts[d].values())})</h4>"
                         + hbar_chart(items, total=n_input, label=f"{d} by reason",
                                      color={"kept": PALETTE[2], "rejected": PALETTE[1],
                                             "failed": PALETTE[3]}.get(d, PALETTE[0])))
            rows += [(d, r, n, f"{100 * n / n_input:.1f}%" if n_input else "") for r, n in items]
        parts.append(_table(["decision", "reason", "rows", "share of input"], rows, "num"))
        if data.has("decision") and origin == "summary.json":
            row_counts, _ = _decision_counts(RunData(data.run_dir, None, data.rows, data.source, totals=data.totals))
            if {d: sum(v.values()) for d, v in row_counts.items()} != {d: sum(v.values()) for d, v in counts.items() if v}:
                parts.append(_note(f"the {data.source} disagrees with summary.json; re-run the pipeline "
                                   "so the manifest and the accounting are from the same run"))
    else:
        parts.append(_note("no decisions yet: the select stage has not run"))
    return _section("funnel", "Funnel", "\n".join(parts))


def _groups(data: RunData, by: str) -> dict[str, np.ndarray]:
    """Row masks per value of `by` (missing values grouped as 'unknown'); one 'all' group when
    the column is absent."""
    if not data.has(by):
        return {"all": np.ones(data.rows.num_rows, dtype=bool)}
    vals = np.array([v if v not in (None, "") else "unknown" for v in data.col(by)], dtype=object)
    return {str(k): vals == k for k in sorted(set(vals.tolist()))}


def section_histograms(data: RunData) -> str:
    if data.rows is None:
        return _section("histograms", "Distributions", _note("no row data"))
    charts, notes = [], []
    langs = _groups(data, "lang")
    # CapFilt's filter score of the web caption is the run's ITM score (own or BLIP ITM head).
    itm_col = "itm_score" if data.has("itm_score") else "capfilt_web_score"
    for col, label in (("clip_score", "CLIP score"), (itm_col, "ITM score")):
        if data.has(col):
            v = data.num(col)
            svg = histogram({k: v[m] for k, m in langs.items()}, label + (" by language" if data.has("lang") else ""), xlabel=col)
            charts.append(svg or "")
            if not svg:
                notes.append(f"{col}: no scored rows")
        else:
            notes.append(f"{label}: no `{col}` column in this run")
    if not data.has("lang"):
        notes.append("no `lang` column: scores and caption lengths are not split by language")
    decisions = _groups(data, "decision")
    if data.has("aspect_ratio"):
        v = data.num("aspect_ratio")
        finite = v[np.isfinite(v)]
        hi = float(min(max(np.percentile(finite, 99), 1.5), 10.0)) if finite.size else None
        charts.append(histogram({k: v[m] for k, m in decisions.items()}, "Aspect ratio (long / short side) by decision",
                                lo=1.0, hi=hi, xlabel=f"aspect ratio (values above {hi:.2g} in the last bin)"
                                if hi else "aspect ratio"))
    else:
        notes.append("aspect ratio: no `aspect_ratio` column (annotate has not run)")
    cap_col = "caption_clean" if data.has("caption_clean") else ("caption" if data.has("caption") else None)
    if cap_col:
        lens = np.array(pc.fill_null(pc.utf8_length(pc.cast(data.rows.column(cap_col), pa.string())), -1)
                        .to_numpy(zero_copy_only=False), dtype=float)
        lens[lens < 0] = np.nan
        finite = lens[np.isfinite(lens)]
        hi = float(max(np.percentile(finite, 99), 10)) if finite.size else None
        charts.append(histogram({k: lens[m] for k, m in langs.items()}, f"Caption length ({cap_col})" + (" by language" if data.has("lang") else ""),
                                lo=0.0, hi=hi, xlabel="characters"))
    else:
        notes.append("caption length: no caption column")
    body = "".join(n for n in (_note(x) for x in notes)) + f'<div class="charts">{"".join(c for c in charts if c)}</div>'
    return _section("histograms", "Distributions", body)


def _sample_uids(data: RunData, per_reason: int) -> list[tuple[str, str, list[int]]]:
    """(decision, reason, uids): the first `per_reason` rows of each group in uid order, so the
    thumbnails come from as few download shards as possible."""
    if not data.has("decision", "uid"):
        return []
    reasons = data.col("reason") if data.has("reason") else [None] * data.rows.num_rows
    groups: dict[tuple[str, str], list[int]] = {}
    for uid, d, r in zip(data.col("uid"), data.col("decision"), reasons):
        key = group_key(d, r)  # the groups whose first rows report_sample keeps
        g = groups.setdefault(key, [])
        if len(g) < per_reason:
            g.append(int(uid))
    order = {d: i for i, d in enumerate(DECISION_ORDER)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 9), k[1]))
    return [(d, r, groups[(d, r)]) for d, r in keys]


def _caption_of(data: RunData, idx: dict[int, int], uid: int) -> tuple[str, str]:
    for c in ("caption_clean", "caption"):
        if data.has(c):
            v = data.rows.column(c)[idx[uid]].as_py()
            if v:
                return _clean_text(v)
    return "", ""


def _img(t: Thumb | None, alt: str) -> str:
    if t is None:
        return ""
    why = "" if t.status == "ok" else f' title="{_e(PLACEHOLDERS[t.status])}"'
    return f'<img src="{_e(t.src)}" alt="{_e(alt)}" loading="eager" class="{_e(t.status)}"{why}>'


def section_samples(data: RunData, groups: list[tuple[str, str, list[int]]], thumbs: dict[int, Thumb],
                    idx: dict[int, int]) -> str:
    if not groups:
        return _section("samples", "Samples", _note("no decisions yet: the select stage has not run"))
    dims = data.has("width", "height")
    parts = []
    for d, reason, uids in groups:
        cards = []
        for uid in uids:
            shown, full = _caption_of(data, idx, uid)
            t = thumbs.get(uid)
            meta = f"uid {uid}"
            if dims:
                w, h = data.rows.column("width")[idx[uid]].as_py(), data.rows.column("height")[idx[uid]].as_py()
                if w and h:
                    meta += f" · {w}×{h}"
            if t is not None and t.status != "ok":
                meta += f" · {PLACEHOLDERS[t.status]}"
            cap = f'<div class="cap" title="{_e(full)}">{_e(shown)}</div>' if shown else '<div class="cap none">(no caption)</div>'
            cards.append(f'<figure class="card">{_img(t, f"uid {uid}")}<figcaption><div class="meta">{_e(meta)}</div>'
                         f'{cap}</figcaption></figure>')
        label = d if reason == d else f"{d}: {reason}"
        parts.append(f'<h3 class="{_e(d)}">{_e(label)}</h3><div class="grid">{"".join(cards)}</div>')
    return _section("samples", "Samples per decision and reason", "\n".join(parts))


TAG_REASONS = (*(r.reason for r in TAG_RULES), UNSCORED)


def _tag_thresholds(run_dir: Path) -> dict[str, float]:
    try:
        sel = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8")).get("select") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {r.key: float(sel[r.key]) for r in TAG_RULES if isinstance(sel.get(r.key), (int, float))}


def _tag_sample_uids(data: RunData, per_reason: int) -> list[tuple[str, list[int]]]:
    """(tag reason, uids) for every tag reason, in uid order; empty lists where none rejected."""
    if not data.has("reason", "uid"):
        return []
    out: dict[str, list[int]] = {r: [] for r in TAG_REASONS}
    for uid, r in zip(data.col("uid"), data.col("reason")):
        if r in out and len(out[r]) < per_reason:
            out[r].append(int(uid))
    return list(out.items())


def section_tags(data: RunData, groups: list[tuple[str, list[int]]], thumbs: dict[int, Thumb],
                 idx: dict[int, int]) -> str:
    """Histograms of the NSFW / watermark / aesthetic scores by decision (threshold marked) and
    thumbnails of the rows each tag rule rejected, with their scores."""
    present = [r for r in TAG_RULES if data.has(r.column)]
    if not present:
        return _section("tags", "Image tags", _note("no image tag scores in this run (the image_tags stage "
                                                    "has not run; README 'Image tags')"))
    th = _tag_thresholds(data.run_dir)
    decisions = _groups(data, "decision")
    charts, notes = [], []
    for r in present:
        tag = r.column.removesuffix("_score")
        v = data.num(r.column)
        heads = sorted({h for h in data.col(f"{tag}_head") if h}) if data.has(f"{tag}_head") else []
        if not heads:
            notes.append(f"{tag}: no head configured")
            continue
        marks = {f"{r.key} {th[r.key]:g}": th[r.key]} if r.key in th else None
        svg = histogram({k: v[m] for k, m in decisions.items()}, f"{tag} score by decision",
                        xlabel=f"{r.column} (head {', '.join(heads)})", marks=marks)
        charts.append(svg)
        if not svg:
            notes.append(f"{r.column}: no scored rows")
        elif r.key not in th:
            notes.append(f"select.{r.key} is not set: {tag} scores are recorded, not used")
    cols = [r.column for r in present]
    parts = []
    for reason, uids in groups:
        if not uids:
            parts.append(f"<h3>rejected: {_e(reason)}</h3>" + _note("no rows"))
            continue
        cards = []
        for uid in uids:
            i = idx[uid]
            scores = " · ".join(f"{c.removesuffix('_score')} {_fmt_score(data.rows.column(c)[i].as_py())}" for c in cols)
            if reason == UNSCORED and data.has("tag_error"):
                scores += f" · {data.rows.column('tag_error')[i].as_py() or ''}"
            cards.append(f'<figure class="card">{_img(thumbs.get(uid), f"uid {uid}")}<figcaption>'
                         f'<div class="meta">uid {uid}</div><div class="score">{_e(scores)}</div></figcaption></figure>')
        parts.append(f'<h3 class="rejected">rejected: {_e(reason)}</h3><div class="grid">{"".join(cards)}</div>')
    body = ("".join(_note(x) for x in notes) + f'<div class="charts">{"".join(c for c in charts if c)}</div>'
            + "\n".join(parts))
    return _section("tags", "Image tags", body)


def _capfilt_pick(data: RunData) -> list[int]:
    """Rows whose captions changed first (a synthetic caption kept, or the web one dropped),
    kept samples before others, then unchanged ones to fill."""
    caps = data.col("captions")
    dec = data.col("decision") if data.has("decision") else [None] * len(caps)
    uids = data.col("uid")
    changed, same = [], []
    for uid, c, d in zip(uids, caps, dec):
        if not c:
            continue
        origins = [x.get("origin") if isinstance(x, dict) else None for x in c]
        (changed if any(o != "web" for o in origins) or len(c) != 1 else same).append((d != "kept", uid))
    return [u for _, u in sorted(changed)[:CAPFILT_ROWS] + sorted(same)[:max(0, CAPFILT_ROWS - len(changed))]]


def _fmt_score(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "–"


def section_capfilt(data: RunData, uids: list[int], thumbs: dict[int, Thumb], idx: dict[int, int]) -> str:
    title = "CapFilt: captions before and after"
    if not data.has("captions") or not (data.has("caption") or data.has("caption_clean")):
        return _section("capfilt", title, _note("no `captions` column with `caption`/`caption_clean` "
                                                "in this run (CapFilt has not run)"))
    origin_n: dict[str, int] = {}
    origin_s: dict[str, list[float]] = {}
    for c in data.col("captions"):
        for x in c or []:
            if not isinstance(x, dict):
                continue
            o = str(x.get("origin"))
            origin_n[o] = origin_n.get(o, 0) + 1
            s = x.get("score")
            if isinstance(s, (int, float)) and math.isfinite(s):
                origin_s.setdefault(o, []).append(float(s))
    stats = _table(["caption origin", "captions kept", "mean filter score"],
                   [(o, n, _fmt_score(float(np.mean(origin_s[o]))) if origin_s.get(o) else "–")
                    for o, n in sorted(origin_n.items(), key=lambda kv: -kv[1])], "num")
    rows = []
    for uid in uids:
        i = idx[uid]
        before = []
        for c in ("caption", "caption_clean"):
            if data.has(c):
                shown, full = _clean_text(data.rows.column(c)[i].as_py())
                before.append(f'<div><span class="tag">{_e(c)}</span> <span title="{_e(full)}">{_e(shown)}</span></div>')
        after = []
        for x in data.rows.column("captions")[i].as_py() or []:
            if not isinstance(x, dict):
                continue
            shown, full = _clean_text(x.get("text"))
            after.append(f'<li><span class="tag o-{_e(re.sub(r"[^a-z0-9_-]", "", str(x.get("origin")).lower()))}">'
                         f'{_e(x.get("origin"))}</span> <span class="score">{_e(_fmt_score(x.get("score")))}</span> '
                         f'<span title="{_e(full)}">{_e(shown)}</span></li>')
        dec = data.rows.column("decision")[i].as_py() if data.has("decision") else ""
        rows.append(f'<tr><td>{_img(thumbs.get(uid), f"uid {uid}")}<div class="meta">uid {uid} {_e(dec or "")}</div></td>'
                    f'<td>{"".join(before)}</td><td><ul>{"".join(after)}</ul></td></tr>')
    table = ('<table class="capfilt"><thead><tr><th>image</th><th>before (web)</th><th>after (kept captions, '
             f'origin, filter score)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return _section("capfilt", title, stats + table)


def _round_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    for p in root.glob("round_*"):
        m = re.fullmatch(r"round_(\d+)", p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _flatten(d: dict, prefix: str = "") -> tuple[dict[str, float], list[str]]:
    nums, skipped = {}, []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            n, s = _flatten(v, key + ".")
            nums.update(n)
            skipped += s
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            nums[key] = float(v)
        else:
            skipped.append(key)
    return nums, skipped


def load_rounds(root: Path) -> tuple[list[tuple[int, dict[str, float]]], list[str]]:
    rounds, notes = [], []
    for r, d in _round_dirs(root):
        p = d / "metrics.json"
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            notes.append(f"round {r}: {p} could not be read ({e.__class__.__name__}: {e})")
            continue
        nums, skipped = _flatten(m)
        if skipped:
            notes.append(f"round {r}: non-numeric metrics not plotted: {', '.join(skipped[:10])}"
                         + (" …" if len(skipped) > 10 else ""))
        rounds.append((r, nums))
    return rounds, notes


def section_rounds(root: Path) -> str:
    title = "Bootstrap rounds"
    if not _round_dirs(root):
        return _section("rounds", title, _note("no round_0/, round_1/ … folders: this is a single run"))
    rounds, notes = load_rounds(root)
    body = "".join(_note(n) for n in notes)
    if not rounds:
        return _section("rounds", title, body + _note("no round has a readable metrics.json"))
    names = sorted({k for _, m in rounds for k in m})
    head = ["metric", *[f"round {r}" for r, _ in rounds]]
    table = _table(head, [(k, *[f"{m[k]:.4g}" if k in m else "–" for _, m in rounds]) for k in names], "num")
    xs = [float(r) for r, _ in rounds]
    plots = [line_plot(xs, [m.get(k) for _, m in rounds], k) for k in names]
    return _section("rounds", title, body + table + f'<div class="charts">{"".join(p for p in plots if p)}</div>')


# ---- page ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC",sans-serif;
 margin:0 auto;max-width:1280px;padding:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{margin:18px 0 6px;font-size:16px} h3.kept{color:#2e7d4f} h3.rejected{color:#b3611b} h3.failed{color:#a3294f}
h4{margin:10px 0 2px}
nav a{margin-right:14px} .note{color:#6a6a6a;font-style:italic;margin:4px 0}
.src,.sub{color:#777;font-size:12px;margin:0}
.acct{font-size:15px;padding:6px 10px;border-radius:4px;display:inline-block}
.acct.ok{background:#e6f4ea}.acct.bad{background:#fde7e9}
table{border-collapse:collapse;margin:8px 0;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.num td+td{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #e3e3e3;border-radius:4px}
svg .lb,svg .tk,svg .lg{font-size:11px;fill:#333} svg .tt{font-size:12px;font-weight:600;fill:#222}
svg .ax{stroke:#888;stroke-width:1}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{margin:0;width:140px;background:#fff;border:1px solid #e3e3e3;border-radius:4px;padding:6px}
.card img,.capfilt img{display:block;width:128px;height:128px;object-fit:contain;background:#eee}
.meta{font-size:11px;color:#666;margin-top:3px}
.cap{font-size:12px;max-height:5.6em;overflow:hidden;overflow-wrap:anywhere} .cap.none{color:#999}
.capfilt td{max-width:460px;overflow-wrap:anywhere} .capfilt ul{margin:0;padding-left:16px}
.tag{font-size:11px;background:#eef;border-radius:3px;padding:0 4px;color:#335}
.score{font-family:monospace;font-size:12px;color:#555}
"""


def render_html(data: RunData, root: Path, thumbs: dict[int, Thumb], groups, capfilt_uids: list[int],
                idx: dict[int, int], tag_groups: list[tuple[str, list[int]]] | None = None) -> str:
    sections = [section_funnel(data), section_histograms(data),
                section_samples(data, groups, thumbs, idx) if data.rows is not None
                else _section("samples", "Samples", _note("no row data")),
                section_tags(data, tag_groups or [], thumbs, idx) if data.rows is not None
                else _section("tags", "Image tags", _note("no row data")),
                section_capfilt(data, capfilt_uids, thumbs, idx) if data.rows is not None
                else _section("capfilt", "CapFilt", _note("no row data")),
                section_rounds(root)]
    nav = "".join(f'<a href="#{s}">{t}</a>' for s, t in (("funnel", "Funnel"), ("histograms", "Distributions"),
                  ("samples", "Samples"), ("tags", "Image tags"), ("capfilt", "CapFilt"), ("rounds", "Rounds")))
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    n = data.n_rows
    notes = "".join(_note(x) for x in data.notes)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>mmcurate report: {_e(root.name)}</title><style>{CSS}</style></head><body>'
            f'<header><h1>mmcurate run report</h1><p class="sub">{_e(root)} · {n} rows from {_e(data.source)}'
            f' · generated {when}</p><nav>{nav}</nav>{notes}</header>\n'
            + "\n".join(sections) + "\n</body></html>\n")


def build_report(run_dir: str | Path, out: str | Path | None = None, samples_per_reason: int = 6,
                 thumb_size: int = 128, thumb_quality: int = 70) -> Path:
    """Write the report for RUN_DIR to `out` (default RUN_DIR/report/index.html) with its
    thumbnails in a `thumbs/` folder beside it; returns the HTML path."""
    root = storage.wpath(run_dir)
    data = load_run(root, per_reason=samples_per_reason)
    # A run on an object store gets its report built in a local folder, then uploaded beside
    # the run (a browser opens it from there or from the local copy).
    upload_to = root / "report" if out is None and storage.is_remote(root) else None
    out_path = Path(out) if out else (storage.local_dir(upload_to) if upload_to else root / "report") / "index.html"
    if out_path.is_dir():
        out_path = out_path / "index.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    groups = _sample_uids(data, samples_per_reason) if data.rows is not None else []
    capfilt_uids = _capfilt_pick(data) if data.has("captions", "uid") else []
    tag_groups = _tag_sample_uids(data, samples_per_reason) if data.rows is not None else []
    idx: dict[int, int] = {}
    if data.has("uid"):
        want = {u for _, _, us in groups for u in us} | set(capfilt_uids) | {u for _, us in tag_groups for u in us}
        idx = {int(u): i for i, u in enumerate(data.col("uid")) if u in want}
    wanted = sorted(idx)
    thumbs = write_thumbs(data.run_dir, wanted, out_path.parent / "thumbs", thumb_size, thumb_quality)
    html = render_html(data, root, thumbs, groups, capfilt_uids, idx, tag_groups)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out_path)
    if upload_to is not None:
        storage.upload_dir(out_path.parent, upload_to)
        return upload_to / "index.html"
    return out_path
