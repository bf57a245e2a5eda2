"""Inference API for the scoring and CapFilt stages (and eval): embeddings for ITC, ITM match
probability, and captions from the decoder.

    inf = AlbefInference.load("ckpt/", device="cuda")
    img = inf.encode_images(pil_images)          # (N, 256) float32, L2-normalised
    txt = inf.encode_texts(captions)             # (M, 256)
    p = inf.itm_score(pil_images, captions)      # (N,) probability that pair i matches
    caps = inf.caption(pil_images, n=5, top_p=0.9)   # nucleus sampling, 5 captions per image
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_model
from .config import AlbefConfig
from .data import MEAN, STD
from .generate import beam_search, sample
from .model import AlbefModel
from .tokenizer import TextTokenizer


class AlbefInference:
    def __init__(self, model: AlbefModel, tokenizer: TextTokenizer, cfg: AlbefConfig,
                 device: str | torch.device = "cpu", batch_size: int = 64):
        self.model = model.eval()
        self.tok = tokenizer
        self.cfg = cfg
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def load(cls, ckpt_dir: str | Path, device: str | torch.device = "cpu",
             batch_size: int = 64) -> "AlbefInference":
        model, tok, cfg = load_model(ckpt_dir, device)
        return cls(model, tok, cfg, device, batch_size)

    def _amp(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ---- preprocessing ----------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised (N, 3, S, S) on the device; resized to a square as in
        ALBEF's eval transform."""
        s = self.cfg.vision.image_size
        arr = np.stack([np.asarray(im.convert("RGB").resize((s, s), Image.BICUBIC)) for im in images])
        x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tok(texts, self.cfg.text.max_len)
        return ids.to(self.device), mask.to(self.device)

    # ---- encoders ---------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeddings(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch token embeddings (N, T, width), ITC features (N, embed_dim))."""
        embeds, feats = [], []
        for i in range(0, len(images), self.batch_size):
            with self._amp():
                e, f = self.model.image_features(self.preprocess(images[i:i + self.batch_size]))
            embeds.append(e)
            feats.append(f.float())
        return torch.cat(embeds), torch.cat(feats)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        return self.image_embeddings(images)[1].cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        out = []
        for i in range(0, len(texts), self.batch_size):
            with self._amp():
                _, f = self.model.text_features(*self._tokens(texts[i:i + self.batch_size]))
            out.append(f.float().cpu())
        return torch.cat(out).numpy().astype(np.float32)

    # ---- ITM --------------------------------------------------------------------------------
    @torch.no_grad()
    def itm_from_embeddings(self, image_embeds: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Match probability of (image_embeds[i], texts[i]) pairs."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids, mask = self._tokens(texts[i:i + self.batch_size])
            with self._amp():
                hidden = self.model.text.encode_text(ids, mask)
                logits = self.model.itm_logits(image_embeds[i:i + self.batch_size], hidden, mask)
            out.append(logits.float().softmax(-1)[:, 1].cpu())
        return torch.cat(out)

    @torch.no_grad()
    def itm_score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise ValueError(f"itm_score scores pairs: got {len(images)} images and {len(texts)} texts")
        if not texts:
            return np.zeros(0, np.float32)
        embeds, _ = self.image_embeddings(images)
        return self.itm_from_embeddings(embeds, texts).numpy().astype(np.float32)

    # ---- captioning -------------------------------------------------------------------------
    def _language_ban(self, langs: list[str | None]) -> torch.Tensor | None:
        masks = [self.tok.off_script_tokens(lg) for lg in langs]
        if all(m is None for m in masks):
            return None
        width = max(m.shape[0] for m in masks if m is not None)
        out = torch.zeros(len(masks), width, dtype=torch.bool)
        for r, m in enumerate(masks):
            if m is not None:
                out[r, :m.shape[0]] = m
        return out

    @torch.no_grad()
    def caption(self, images: list[Image.Image], n: int = 1, top_p: float = 0.9,
                max_len: int | None = None, beam: int | None = None, min_len: int = 3,
                seed: int | None = None, lang: str | Sequence[str | None] | None = None
                ) -> list[list[str]]:
        """n captions per image: nucleus sampling (top_p), or the n best of beam search when
        `beam` is given. `lang` ("en" / "zh", one for all or one per image) keeps each
        caption in that language by banning the other script's tokens; None leaves it free."""
        max_len = max_len or self.cfg.text.max_len
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        out: list[list[str]] = []
        langs = [lang] * len(images) if lang is None or isinstance(lang, str) else list(lang)
        if len(langs) != len(images):
            raise ValueError(f"caption: got {len(langs)} languages for {len(images)} images")
        for i in range(0, len(images), self.batch_size):
            embeds, _ = self.image_embeddings(images[i:i + self.batch_size])
            ban = self._language_ban(langs[i:i + self.batch_size])
            start = self.tok.continuation_tokens()
            with self._amp():
                if beam:
                    seqs = beam_search(self.model, embeds, beam=beam, n=n, max_len=max_len, min_len=min_len,
                                       row_ban=ban, start_ban=start)
                else:
                    seqs = sample(self.model, embeds, n=n, top_p=top_p, max_len=max_len,
                                  min_len=min_len, generator=gen, row_ban=ban,
                                  start_ban=start)
            out += [[self.tok.decode(s) for s in per_image] for per_image in seqs]
        return out
