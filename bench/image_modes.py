"""The image-mode matrix: every mode Pillow can write x every format that holds it, plus
animations, EXIF orientations 1-8 and the held-out files in skimage's wheel; how many decode in
annotate and give the same pixels in every consumer (score CPU, score GPU path on CPU tensors,
capfilt, the trainer's reader, export's key.jpg).

    python bench/image_modes.py

The checks are tests/test_image_modes.py's own (`check`), so the figures printed here are what
that test asserts. Needs scikit-image (the `test` extra). About 10 s of CPU.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth.image_modes import animations, held_out, matrix, oriented  # noqa: E402


def _test_module():
    spec = importlib.util.spec_from_file_location("test_image_modes", ROOT / "tests" / "test_image_modes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main() -> int:
    t = _test_module()
    score = t._score_stage()
    t0 = time.perf_counter()
    samples, status = matrix()
    results = {(s.mode, s.fmt): t.check(s, score) for s in samples}
    print(t._table(status, results))
    failures = {f"{m}.{f}": v for (m, f), v in results.items() if v}
    for kind, make in (("animations (GIF, APNG, WebP, multi-page TIFF)", animations),
                       ("EXIF orientations 1-8 x JPEG/PNG/WebP/AVIF", oriented),
                       ("held out: skimage wheel files from other encoders", held_out)):
        group = make()
        bad = {s.name: b for s in group if (b := t.check(s, score))}
        failures.update(bad)
        print(f"{kind}: {len(group) - len(bad)}/{len(group)} decode and agree")
    print(f"{time.perf_counter() - t0:.1f} s")
    for name, why in failures.items():
        print(f"FAIL {name}: {'; '.join(why)}")
    score.pool.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
