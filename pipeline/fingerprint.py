"""What a stage's outputs depend on, as one short hash per stage.

A stage's fingerprint covers the result-affecting settings of its own recipe section, the keep
rules other sections route to it (`select` only), what the stage declares beyond its section
(`Stage.fingerprint_extra`, e.g. the run's seed), and the previous stage's fingerprint, so an
edit redoes that stage and what follows, and nothing upstream.

Which settings count is declared on the config fields (pipeline/config.py): RUNTIME ones
(threads, processes, batch sizes, device) never count; SELECT_RULE ones count for `select`
instead of their own stage. Settings left at their default do not count either, so a release
that adds an option does not redo finished work.

Files named in the recipe count by content: any string setting that names an existing local
file or folder adds a digest. A file up to FILE_HASH_LIMIT is hashed whole (lexicons,
boilerplate lists, a checkpoint file); a larger file by size and modification time, and a folder
(a model directory) by the relative names, sizes and modification times of the files in it, which
costs a directory walk, not a read of gigabytes, and changes whenever a model is rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

FILE_HASH_LIMIT = 64 << 20


def field_role(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    return extra.get("fingerprint") if isinstance(extra, dict) else None  # type: ignore[return-value]


# URLs of these schemes name objects; their listing (sizes, ETags) stands for their content.
OBJECT_STORE_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"}


def _object_digest(value: str) -> str | None:
    """Sizes and ETags (or modification times) of the object or objects under a URL: an object
    store keeps them, so no byte is read. None when the URL names nothing."""
    from pipeline.storage import wpath

    try:
        p = wpath(value)
        found = p.fs.find(p.path, detail=True, withdirs=False)
    except (OSError, ValueError, ImportError):
        return None
    if not found:
        return None
    h = hashlib.sha256()
    for name in sorted(found):
        info = found[name]
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") \
            or info.get("mtime") or info.get("updated") or ""
        h.update(f"{name}\0{info.get('size')}\0{tag}\n".encode())
    return "objects:" + h.hexdigest()


def path_digest(value: str) -> str | None:
    """Digest of the local file or folder (or object-store URL) `value` names, or None when it
    names none."""
    if not value or "\n" in value or len(value) > 4096:
        return None
    if "://" in value:
        return _object_digest(value) if value.split("://", 1)[0].lower() in OBJECT_STORE_SCHEMES else None
    p = Path(value)
    try:
        if p.is_file():
            st = p.stat()
            if st.st_size > FILE_HASH_LIMIT:
                return f"stat:{st.st_size}:{st.st_mtime_ns}"
            h = hashlib.sha256()
            with p.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            return "sha256:" + h.hexdigest()
        if p.is_dir():
            h = hashlib.sha256()
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    fp = Path(root) / f
                    st = fp.stat()
                    h.update(f"{fp.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            return "tree:" + h.hexdigest()
    except OSError:
        return None
    return None


def settings(value: Any, routed: dict[str, dict[str, Any]] | None = None, path: str = "") -> Any:
    """The result-affecting part of a config value, as JSON-able data. Fields routed to another
    stage are collected in `routed[stage][dotted.path]` instead."""
    if isinstance(value, BaseModel):
        cls = type(value)
        out: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            v = getattr(value, name)
            default = field.get_default(call_default_factory=True)
            if default is not PydanticUndefined and v == default:
                continue
            role = field_role(cls, name)
            if role == "runtime":
                continue
            sub = f"{path}.{name}" if path else name
            if role is not None:
                if routed is not None:
                    routed.setdefault(role, {})[sub] = settings(v, None, sub)
                continue
            out[name] = settings(v, routed, sub)
        return out
    if isinstance(value, dict):
        return {str(k): settings(v, routed, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [settings(v, routed, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        d = path_digest(value)
        return value if d is None else {"path": value, "content": d}
    return to_jsonable_python(value)


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def input_fingerprint(recipe: Any) -> str:
    """The input list's settings and content, and the shard size: a workdir holds one input."""
    return digest(settings(recipe.input), recipe.shard_size)


def stage_settings(recipe: Any, stages: list[str]) -> dict[str, str]:
    """Digest of what each stage itself depends on (not chained): its section's result-affecting
    settings, the keep rules routed to it from other sections, and its `fingerprint_extra`."""
    from pipeline.registry import stage_class, stage_config

    routed: dict[str, dict[str, Any]] = {}
    own = {name: settings(stage_config(recipe, name), routed, name) for name in stages}
    return {name: digest(name, own[name], routed.get(name, {}), stage_class(name).fingerprint_extra(recipe))
            for name in stages}


def stage_fingerprints(recipe: Any, stages: list[str], base: str | None = None,
                       pinned: dict[str, str] | None = None, own: dict[str, str] | None = None
                       ) -> dict[str, str]:
    """Each stage's fingerprint: its own settings chained after the previous stage's fingerprint
    (the first after the input's). `pinned` fixes some stages' fingerprints: a download kept
    although its settings changed, since what follows was computed from the kept images."""
    own = own or stage_settings(recipe, stages)
    prev = base if base is not None else input_fingerprint(recipe)
    out: dict[str, str] = {}
    for name in stages:
        prev = (pinned or {}).get(name) or digest(prev, own[name])
        out[name] = prev
    return out
