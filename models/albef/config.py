"""Typed ALBEF configuration: model sizes, loss settings and training defaults.

Configs live as YAML in `models/configs/` (`tiny`, `albef-base`) or any YAML path. They are
stored in checkpoints as JSON (never pickled), so `torch.load(weights_only=True)` works.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VisionConfig(_Strict):
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    # open_clip ViTs have a LayerNorm before the blocks; timm ViTs do not.
    pre_norm: bool = False
    # Local timm / open_clip ViT weights (state dict file or directory) to start from.
    pretrained: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "VisionConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size {self.image_size} must be a multiple of "
                             f"vision.patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"vision.width {self.width} must be divisible by vision.heads {self.heads}")
        return self


class TextConfig(_Strict):
    vocab_size: int = 30522
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    # ALBEF splits BERT: the first `text_layers` encode text, the last `fusion_layers` add
    # cross-attention to the image.
    text_layers: int = 6
    fusion_layers: int = 6
    max_len: int = 30
    max_positions: int = 512
    dropout: float = 0.1
    # Local HF BERT directory (bert-base-chinese, bert-base-uncased, multilingual) to start from;
    # its config.json overrides the sizes above.
    pretrained: str | None = None
    # Local HF tokenizer directory; when unset a WordPiece tokenizer is trained on the captions.
    tokenizer: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "TextConfig":
        if self.hidden % self.heads:
            raise ValueError(f"text.hidden {self.hidden} must be divisible by text.heads {self.heads}")
        if self.fusion_layers < 1:
            raise ValueError("text.fusion_layers must be >= 1 (ITM and captioning need cross-attention)")
        return self


class TrainConfig(_Strict):
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.02
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 5.0
    # CPU-side decode size (square); the GPU random-resized-crop then cuts `image_size` from it.
    load_size: int = 256
    crop_scale: tuple[float, float] = (0.5, 1.0)
    loader_workers: int = 2
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    tokenizer_vocab: int = 8000


class AlbefConfig(_Strict):
    name: str = "custom"
    vision: VisionConfig = Field(default_factory=VisionConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    embed_dim: int = 256
    queue_size: int = 65536
    momentum: float = 0.995
    temp: float = 0.07
    alpha: float = 0.4
    mlm_probability: float = 0.15
    label_smoothing: float = 0.1
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"itc": 1.0, "itm": 1.0, "mlm": 1.0, "lm": 1.0})
    grad_checkpointing: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check(self) -> "AlbefConfig":
        unknown = set(self.loss_weights) - {"itc", "itm", "mlm", "lm"}
        if unknown:
            raise ValueError(f"loss_weights has unknown terms {sorted(unknown)}; "
                             "use itc, itm, mlm, lm")
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "AlbefConfig":
        return cls.model_validate(json.loads(text))


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> AlbefConfig:
    """Load a named config (`tiny`, `albef-base`) or a YAML/JSON file, with dotted overrides
    such as {"train.batch_size": 16}."""
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no config {name_or_path!r}: pass a YAML path or one of "
                                    f"{available_configs()}")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return AlbefConfig.model_validate(raw)
