"""open_clip models: any built-in architecture with a pretrained tag, a checkpoint file, or a
local directory holding open_clip_config.json plus weights (open_clip's `local-dir:` layout)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from models.clip.base import ClipBackend, l2n
from models.clip.transforms import PixelSpec

log = logging.getLogger(__name__)

_CONFIG_FILE = "open_clip_config.json"
_WEIGHTS_FILE = "open_clip_pytorch_model.bin"


def save_open_clip_dir(model: torch.nn.Module, model_cfg: dict[str, Any], out_dir: str | Path,
                       preprocess_cfg: dict[str, Any] | None = None) -> Path:
    """Write a model in the layout `OpenClipBackend(path=...)` (and open_clip's `local-dir:`)
    loads offline: the architecture config next to a state dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"model_cfg": model_cfg}
    if preprocess_cfg:
        cfg["preprocess_cfg"] = preprocess_cfg
    (out / _CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    torch.save(model.state_dict(), out / _WEIGHTS_FILE)
    return out


class OpenClipBackend(ClipBackend):
    def __init__(self, model: str | None = None, pretrained: str | None = None,
                 path: str | None = None, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, batch_size: int = 256,
                 context_length: int | None = None):
        import open_clip  # heavy import, only when this backend is used

        if path:
            p = Path(path)
            if p.is_dir():
                if not (p / _CONFIG_FILE).is_file():
                    raise FileNotFoundError(
                        f"open_clip dir {p} has no {_CONFIG_FILE}; write one with "
                        "models.clip.open_clip_backend.save_open_clip_dir or pass model + pretrained")
                model_name, pretrained_arg = f"local-dir:{p}", None
            elif p.is_file():
                if not model:
                    raise ValueError(f"open_clip checkpoint file {p} needs `model` (the "
                                     "architecture name, e.g. ViT-B-32)")
                model_name, pretrained_arg = model, str(p)
            else:
                raise FileNotFoundError(f"open_clip path {p} does not exist")
        else:
            if not model:
                raise ValueError("open_clip backend needs `model` (e.g. ViT-B-32) or `path`")
            model_name, pretrained_arg = model, pretrained
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        kwargs: dict[str, Any] = {}
        if context_length:
            kwargs["force_context_length"] = context_length
        # Random init (pretrained None) must not reach for hub weights of HF text towers.
        self.model = open_clip.create_model(
            model_name, pretrained=pretrained_arg, precision=precision, device=device,
            pretrained_text=bool(pretrained_arg) or model_name.startswith("local-dir:"),
            **kwargs).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
        pc = open_clip.get_model_preprocess_cfg(self.model)
        size = pc.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.pixel = PixelSpec(size=size, mean=tuple(pc.get("mean", PixelSpec.mean)),
                               std=tuple(pc.get("std", PixelSpec.std)),
                               interpolation=pc.get("interpolation", "bicubic"),
                               resize_mode=pc.get("resize_mode", "shortest"),
                               fill=int(pc.get("fill_color", 0)))
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        tag = pretrained_arg if pretrained_arg and not os.path.isfile(pretrained_arg) else None
        self.name = f"open_clip:{path or model}" + (f"/{tag}" if tag else "")
        with torch.inference_mode():
            self.embed_dim = int(self.encode_text_tensor(["a"]).shape[-1])

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        # open_clip's fp16/bf16 precision casts the weights (LayerNorms stay fp32), so inputs
        # must match the conv dtype; no autocast needed.
        return l2n(self.model.encode_image(pixels.to(self.dtype)))

    def encode_text_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        return l2n(self.model.encode_text(tokens))
