"""The device decode path's pieces, run on CPU tensors (torchvision decodes lists on CPU too)."""
import io

import numpy as np
import torch
from PIL import Image

from models.clip.transforms import PixelSpec
from models.gpu_decode import decode_cpu, decode_jpegs_gpu, is_jpeg, resize_batch_gpu


def _jpeg(w: int, h: int, seed: int) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
    arr = np.clip(arr + rng.integers(0, 8, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_batched_decode_isolates_bad_jpeg():
    good = [_jpeg(64, 48, 0), _jpeg(50, 70, 1)]
    bad = good[0][:30]
    assert is_jpeg(bad) and not is_jpeg(b"\x89PNG....") and not is_jpeg(None)
    out = decode_jpegs_gpu([good[0], bad, good[1]], torch.device("cpu"))
    assert out[1] is None
    assert out[0].shape == (3, 48, 64) and out[2].shape == (3, 70, 50)


def test_device_resize_close_to_cpu_path():
    spec = PixelSpec(size=(32, 32))
    datas = [_jpeg(64, 48, 0), _jpeg(50, 70, 1), _jpeg(64, 48, 2), _jpeg(20, 16, 3)]
    dec = decode_jpegs_gpu(datas, torch.device("cpu"))
    dev = resize_batch_gpu(dec, spec).permute(0, 2, 3, 1).numpy()
    cpu = np.stack([decode_cpu(d, spec, draft=False) for d in datas]).astype(np.float32)
    assert dev.shape == cpu.shape == (4, 32, 32, 3)
    # Different resize kernels and JPEG decoders: close, not identical.
    assert np.abs(dev - cpu).mean() < 4.0
