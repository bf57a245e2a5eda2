"""Start from local pretrained weights: a timm or open_clip ViT for the image encoder and an HF
BERT (bert-base-uncased, bert-base-chinese, bert-base-multilingual-*) for the text side.

As in ALBEF, BERT's first layers become the text encoder and its last layers the fusion
encoder, whose cross-attention starts from scratch. As in BLIP, the decoder's causal
self-attention starts as a copy of the encoder's self-attention.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import AlbefConfig
from .model import AlbefModel

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
                 "open_clip_model.safetensors", "model.pt", "model.pth")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file (.safetensors, or a torch file loadable with weights_only) or a directory
    holding one."""
    p = Path(path)
    if p.is_dir():
        found = next((p / f for f in _WEIGHT_FILES if (p / f).exists()), None)
        if found is None:
            raise FileNotFoundError(f"{p} holds none of {_WEIGHT_FILES}")
        p = found
    if not p.exists():
        raise FileNotFoundError(f"pretrained weights {p} do not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    sd = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


# ---- text -------------------------------------------------------------------------------------
def apply_text_config(cfg: AlbefConfig) -> AlbefConfig:
    """Take the text sizes from the pretrained BERT's config.json; split its layers between
    text and fusion as configured when they add up, else half and half (ALBEF: 6 + 6)."""
    src = Path(cfg.text.pretrained)
    conf_file = src / "config.json"
    if not conf_file.exists():
        raise FileNotFoundError(f"text.pretrained {src} has no config.json; pass an HF BERT directory")
    hf = json.loads(conf_file.read_text())
    n = hf["num_hidden_layers"]
    t, f = cfg.text.text_layers, cfg.text.fusion_layers
    if t + f != n:
        t, f = n // 2, n - n // 2
    update = dict(hidden=hf["hidden_size"], heads=hf["num_attention_heads"],
                  intermediate=hf["intermediate_size"], vocab_size=hf["vocab_size"],
                  max_positions=hf.get("max_position_embeddings", 512), text_layers=t, fusion_layers=f,
                  dropout=hf.get("hidden_dropout_prob", cfg.text.dropout))
    if cfg.text.tokenizer is None and any((src / x).exists() for x in ("vocab.txt", "tokenizer.json")):
        update["tokenizer"] = str(src)
    return cfg.model_copy(update={"text": cfg.text.model_copy(update=update)})


_BERT_MAP = [
    (r"^embeddings\.word_embeddings\.", "embeddings.word."),
    (r"^embeddings\.position_embeddings\.", "embeddings.position."),
    (r"^embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"^embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.o."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn.fc2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]
_MLM_MAP = [
    (r"^cls\.predictions\.transform\.dense\.", "dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "norm."),
    (r"^cls\.predictions\.bias$", "bias"),
]


def _rename(sd: dict, table) -> dict:
    out = {}
    for k, v in sd.items():
        k = k.replace(".gamma", ".weight").replace(".beta", ".bias")
        for pat, rep in table:
            if re.search(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
    return out


def load_bert(model: AlbefModel, path: str | Path) -> list[str]:
    """Load HF BERT weights into the text encoder (+ MLM head when present). Returns the
    encoder's parameter names left at their fresh init (cross-attention)."""
    sd = read_state_dict(path)
    sd = {re.sub(r"^bert\.", "", k): v for k, v in sd.items()}
    mine = _rename(sd, _BERT_MAP)
    if not mine:
        raise ValueError(f"{path} does not look like an HF BERT checkpoint (no encoder.layer.* keys)")
    try:
        missing, unexpected = model.text.load_state_dict(mine, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{path}: BERT weights do not fit the text config ({e})") from e
    if unexpected:
        raise ValueError(f"{path}: BERT weights do not fit the text config ({unexpected[:3]} ...)")
    head = _rename(sd, _MLM_MAP)
    if head:
        model.mlm_head.load_state_dict(head, strict=True)
    # BLIP: the decoder's self-attention starts from the encoder's
    for i, layer in enumerate(model.text.layers):
        model.decoder.self_attn[i].load_state_dict(layer.self_attn.state_dict())
        model.decoder.self_norm[i].load_state_dict(layer.self_norm.state_dict())
    if head:
        model.decoder.head.load_state_dict(model.mlm_head.state_dict())
    return missing


# ---- vision -----------------------------------------------------------------------------------
_OPEN_CLIP_MAP = [
    (r"^conv1\.weight$", "patch_embed.proj.weight"),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_", r"blocks.\1.attn.qkv."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
]


def _from_open_clip(sd: dict) -> dict:
    if any(k.startswith("visual.") for k in sd):  # a whole CLIP: keep the image tower only
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    out = {}
    for k, v in sd.items():
        if k == "class_embedding":
            out["cls_token"] = v.view(1, 1, -1)
        elif k == "positional_embedding":
            out["pos_embed"] = v.unsqueeze(0)
        else:
            for pat, rep in _OPEN_CLIP_MAP:
                if re.search(pat, k):
                    out[re.sub(pat, rep, k)] = v  # in_proj_weight -> qkv.weight
                    break
    return out


def _resize_pos_embed(pos: torch.Tensor, n_tokens: int) -> torch.Tensor:
    if pos.shape[1] == n_tokens:
        return pos
    cls, grid = pos[:, :1], pos[:, 1:]
    old = int(grid.shape[1] ** 0.5)
    new = int((n_tokens - 1) ** 0.5)
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)], dim=1)


def load_vit(model: AlbefModel, path: str | Path) -> None:
    """Load a timm ViT state dict (names match ours) or an open_clip one (`visual.*`)."""
    sd = read_state_dict(path)
    if any(k.endswith("conv1.weight") for k in sd):
        sd = _from_open_clip(sd)
        if "norm_pre.weight" in sd and not model.cfg.vision.pre_norm:
            raise ValueError(f"{path} is an open_clip ViT (LayerNorm before the blocks): set "
                             "vision.pre_norm: true in the config")
    sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    if "pos_embed" in sd:
        sd["pos_embed"] = _resize_pos_embed(sd["pos_embed"], model.visual.num_tokens)
    if "patch_embed.proj.weight" in sd and "patch_embed.proj.bias" not in sd:
        sd["patch_embed.proj.bias"] = torch.zeros(sd["patch_embed.proj.weight"].shape[0])
    sd = {k: v for k, v in sd.items() if k in model.visual.state_dict()}
    try:
        missing, _ = model.visual.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{path}: ViT weights do not fit the vision config ({e})") from e
    if missing:
        raise ValueError(f"{path}: ViT weights do not fit the vision config; missing {missing[:5]}")


def load_pretrained(model: AlbefModel, cfg: AlbefConfig) -> None:
    if cfg.vision.pretrained:
        load_vit(model, cfg.vision.pretrained)
    if cfg.text.pretrained:
        load_bert(model, cfg.text.pretrained)
    model.init_momentum()
