"""BERT-style text side: encoder (text layers, then fusion layers with cross-attention to the
image, as ALBEF splits BERT) and a BLIP-style image-grounded causal decoder.

The decoder shares with the encoder what BLIP shares: the embeddings, the feed-forward blocks and
the cross-attention; it owns its causal self-attention (BLIP found the encode/decode difference
is best captured there). Heads are tied to the word embeddings as in BERT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig
from .vit import _init_linear


class Attention(nn.Module):
    """Multi-head attention over `x` (self) or over `kv` (cross), computed with SDPA."""

    def __init__(self, hidden: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        kv_dim = kv_dim or hidden
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(kv_dim, hidden)
        self.v = nn.Linear(kv_dim, hidden)
        self.o = nn.Linear(hidden, hidden)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask: bool, broadcastable to (B, heads, Lq, Lk), True where attention is allowed."""
        kv = x if kv is None else kv
        q, k, v = self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        b, h, n, dh = out.shape
        return self.o(out.transpose(1, 2).reshape(b, n, h * dh))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TextLayer(nn.Module):
    """Post-LN BERT layer; fusion layers add cross-attention between self-attention and FFN."""

    def __init__(self, cfg: TextConfig, cross_dim: int | None):
        super().__init__()
        self.self_attn = Attention(cfg.hidden, cfg.heads, dropout=cfg.dropout)
        self.self_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.cross_attn = (Attention(cfg.hidden, cfg.heads, kv_dim=cross_dim, dropout=cfg.dropout)
                           if cross_dim else None)
        self.cross_norm = nn.LayerNorm(cfg.hidden, eps=1e-12) if cross_dim else None
        self.ffn = FeedForward(cfg.hidden, cfg.intermediate)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)

    def cross_and_ffn(self, h: torch.Tensor, image: torch.Tensor | None,
                      image_mask: torch.Tensor | None) -> torch.Tensor:
        if self.cross_attn is not None:
            h = self.cross_norm(h + self.drop(self.cross_attn(h, image, image_mask)))
        return self.ffn_norm(h + self.drop(self.ffn(h)))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, image: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_norm(h + self.drop(self.self_attn(h, mask=mask)))
        return self.cross_and_ffn(h, image, image_mask)


class Embeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(2, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.word(ids) + self.position(pos)[None] + self.token_type.weight[0]
        return self.drop(self.norm(h))


class Head(nn.Module):
    """BERT prediction head: transform, then logits tied to the word embeddings."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: torch.Tensor, word_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(h))), word_weight, self.bias)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 0/1 -> bool (B, 1, 1, L) key mask for SDPA."""
    return attention_mask.bool()[:, None, None, :]


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, vision_width: int):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(
            [TextLayer(cfg, None) for _ in range(cfg.text_layers)]
            + [TextLayer(cfg, vision_width) for _ in range(cfg.fusion_layers)])
        self.grad_checkpointing = False
        self.apply(_init_bert)

    def _run(self, layer: nn.Module, *args) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal text encoding (first `text_layers` layers)."""
        h = self.embeddings(ids)
        mask = padding_mask(attention_mask)
        for layer in self.layers[: self.cfg.text_layers]:
            h = self._run(layer, h, mask)
        return h

    def fuse(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor,
             image_embeds: torch.Tensor) -> torch.Tensor:
        """Fusion layers: text attends to itself, then to the image tokens."""
        mask = padding_mask(attention_mask)
        h = text_hidden
        for layer in self.layers[self.cfg.text_layers:]:
            h = self._run(layer, h, mask, image_embeds)
        return h


class TextDecoder(nn.Module):
    """Image-grounded causal decoder over the encoder's shared layers (passed in at call time so
    the shared weights are stored once)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        n = cfg.text_layers + cfg.fusion_layers
        self.self_attn = nn.ModuleList(Attention(cfg.hidden, cfg.heads, dropout=cfg.dropout) for _ in range(n))
        self.self_norm = nn.ModuleList(nn.LayerNorm(cfg.hidden, eps=1e-12) for _ in range(n))
        self.head = Head(cfg.hidden, cfg.vocab_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(_init_bert)

    def forward(self, enc: TextEncoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                image_embeds: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, L, hidden); `self.head(h, word_weight)` gives next-token logits."""
        L = ids.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
        mask = causal[None, None] & padding_mask(attention_mask)
        h = enc.embeddings(ids)
        for i, layer in enumerate(enc.layers):
            h = self.self_norm[i](h + self.drop(self.self_attn[i](h, mask=mask)))
            h = layer.cross_and_ffn(h, image_embeds, None)
        return h


def _init_bert(m: nn.Module) -> None:
    if isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
    else:
        _init_linear(m)
