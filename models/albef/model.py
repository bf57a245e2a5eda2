"""The ALBEF-style model: ViT + split BERT (text / fusion), ITC projections, ITM and MLM heads,
a momentum copy with feature queues, and a BLIP-style captioning decoder.

`forward` computes every training loss in one call (so DDP sees one forward per step) and
returns a dict of loss terms.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .config import AlbefConfig
from .distributed import batch_sizes, gather_no_grad, gather_with_grad, pad_to, world
from .text import Head, TextDecoder, TextEncoder
from .vit import VisionTransformer


@dataclass(frozen=True)
class TokenIds:
    pad: int
    cls: int
    sep: int
    mask: int
    special: tuple[int, ...]


class AlbefModel(nn.Module):
    def __init__(self, cfg: AlbefConfig, tokens: TokenIds):
        super().__init__()
        self.cfg = cfg
        self.tokens = tokens
        vw, th = cfg.vision.width, cfg.text.hidden
        self.visual = VisionTransformer(cfg.vision)
        self.vision_proj = nn.Linear(vw, cfg.embed_dim)
        self.text = TextEncoder(cfg.text, vision_width=vw)
        self.text_proj = nn.Linear(th, cfg.embed_dim)
        self.itm_head = nn.Linear(th, 2)
        self.mlm_head = Head(th, cfg.text.vocab_size)
        self.decoder = TextDecoder(cfg.text)
        self.temp = nn.Parameter(torch.tensor(cfg.temp))
        self.register_buffer("special_ids", torch.tensor(sorted(set(tokens.special)), dtype=torch.long),
                             persistent=False)
        self.init_momentum()
        q = cfg.queue_size
        # ALBEF starts the queues with random unit vectors rather than zeros.
        self.register_buffer("image_queue", F.normalize(torch.randn(cfg.embed_dim, q), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.embed_dim, q), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    # ---- momentum model -----------------------------------------------------------------
    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.visual, self.visual_m), (self.vision_proj, self.vision_proj_m),
                (self.text, self.text_m), (self.text_proj, self.text_proj_m),
                (self.mlm_head, self.mlm_head_m)]

    def init_momentum(self) -> None:
        """(Re)create the momentum copies from the online weights (after loading pretrained ones)."""
        self.visual_m = copy.deepcopy(self.visual)
        self.vision_proj_m = copy.deepcopy(self.vision_proj)
        self.text_m = copy.deepcopy(self.text)
        self.text_proj_m = copy.deepcopy(self.text_proj)
        self.mlm_head_m = copy.deepcopy(self.mlm_head)
        for _, m in self._pairs():
            m.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        online, target = [], []
        for a, b in self._pairs():
            online += list(a.parameters())
            target += list(b.parameters())
        # p_m <- m * p_m + (1 - m) * p
        torch._foreach_lerp_(target, online, 1.0 - self.cfg.momentum)

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor) -> None:
        n, q = image_feat.shape[0], self.cfg.queue_size
        idx = (self.queue_ptr + torch.arange(n, device=image_feat.device)) % q
        self.image_queue[:, idx[-q:]] = image_feat[-q:].T.to(self.image_queue.dtype)
        self.text_queue[:, idx[-q:]] = text_feat[-q:].T.to(self.text_queue.dtype)
        self.queue_ptr.fill_(int((self.queue_ptr + n) % q))

    def set_grad_checkpointing(self, on: bool = True) -> None:
        self.visual.grad_checkpointing = on
        self.text.grad_checkpointing = on

    def train(self, mode: bool = True) -> "AlbefModel":
        super().train(mode)
        for _, m in self._pairs():  # momentum copies always run in eval mode (no dropout)
            m.eval()
        return self

    # ---- encoders -------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.visual(images)
        return embeds, F.normalize(self.vision_proj(embeds[:, 0]).float(), dim=-1)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.text.encode_text(ids, mask)
        return hidden, F.normalize(self.text_proj(hidden[:, 0]).float(), dim=-1)

    def itm_logits(self, image_embeds: torch.Tensor, text_hidden: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
        return self.itm_head(self.text.fuse(text_hidden, mask, image_embeds)[:, 0]).float()

    def decoder_logits(self, ids: torch.Tensor, mask: torch.Tensor,
                       image_embeds: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, vocab) of the captioning decoder."""
        h = self.decoder(self.text, ids, mask, image_embeds)
        return self.decoder.head(h, self.text.embeddings.word.weight).float()

    # ---- training forward -------------------------------------------------------------------
    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                alpha: float = 0.0) -> dict[str, torch.Tensor]:
        w = self.cfg.loss_weights
        rank, _ = world()
        b = ids.shape[0]
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        temp = self.temp.float()

        image_embeds, image_feat = self.image_features(images)
        text_hidden, text_feat = self.text_features(ids, mask)

        with torch.no_grad():
            self.momentum_update()
            image_embeds_m = self.visual_m(images)
            image_feat_m = F.normalize(self.vision_proj_m(image_embeds_m[:, 0]).float(), dim=-1)
            text_hidden_m = self.text_m.encode_text(ids, mask)
            text_feat_m = F.normalize(self.text_proj_m(text_hidden_m[:, 0]).float(), dim=-1)
            image_feat_m_all = gather_no_grad(image_feat_m)
            text_feat_m_all = gather_no_grad(text_feat_m)
            image_bank = torch.cat([image_feat_m_all, self.image_queue.T.float()])
            text_bank = torch.cat([text_feat_m_all, self.text_queue.T.float()])
            sim_i2t_m = image_feat_m @ text_bank.T / temp
            sim_t2i_m = text_feat_m @ image_bank.T / temp
        # The positives sit at this worker's slice of the gathered batch (workers' batches may
        # differ in size when corrupt samples were dropped).
        pos = torch.arange(b, device=ids.device) + sum(batch_sizes(b, ids.device)[:rank])
        sim_i2t = image_feat @ text_bank.T / temp
        sim_t2i = text_feat @ image_bank.T / temp
        out: dict[str, torch.Tensor] = {}
        out["itc"] = L.itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, pos, alpha)
        self.enqueue(image_feat_m_all, text_feat_m_all)

        if w.get("itm", 0) > 0:
            out["itm"] = self._itm(image_embeds, text_hidden, ids, mask, sim_i2t, sim_t2i, pos)
        if w.get("mlm", 0) > 0:
            out["mlm"] = self._mlm(image_embeds, image_embeds_m, ids, mask, alpha)
        if w.get("lm", 0) > 0:
            out["lm"] = self._lm(image_embeds, ids, mask)
        out["loss"] = sum(w.get(k, 0.0) * v for k, v in out.items())
        return out

    def _itm(self, image_embeds, text_hidden, ids, mask, sim_i2t, sim_t2i, pos) -> torch.Tensor:
        b = ids.shape[0]
        image_all = gather_with_grad(image_embeds)
        text_all = gather_with_grad(text_hidden)
        mask_all = gather_no_grad(mask)
        ids_all = gather_no_grad(ids, pad=self.tokens.pad)
        g, length = ids_all.shape
        # Another worker's captions may be longer: pad ours (masked out) to the gathered length.
        text_hidden = pad_to(text_hidden, (b, length, text_hidden.shape[2]))
        mask = pad_to(mask, (b, length))
        ids = pad_to(ids, (b, length), self.tokens.pad)
        with torch.no_grad():
            same = L.same_caption(ids, ids_all)
            same[torch.arange(b), pos] = True
            neg = L.sample_hard_negatives(sim_i2t[:, :g], sim_t2i[:, :g], same)
        text_in = torch.cat([text_hidden, text_hidden, text_all[neg.text_index]])
        mask_in = torch.cat([mask, mask, mask_all[neg.text_index]])
        image_in = torch.cat([image_embeds, image_all[neg.image_index], image_embeds])
        logits = self.itm_logits(image_in, text_in, mask_in)
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(ids.device)
        valid = torch.cat([torch.ones(b, dtype=torch.bool, device=ids.device),
                           neg.image_valid, neg.text_valid]).float()
        return L.itm_loss(logits, labels, valid)

    def _mlm(self, image_embeds, image_embeds_m, ids, mask, alpha) -> torch.Tensor:
        masked, labels = L.mask_tokens(ids, self.special_ids, self.tokens.mask,
                                       self.cfg.text.vocab_size, self.cfg.mlm_probability)
        sel = labels != -100
        h = self.text.fuse(self.text.encode_text(masked, mask), mask, image_embeds)
        logits = self.mlm_head(h[sel], self.text.embeddings.word.weight)
        logits_m = None
        if alpha > 0:
            with torch.no_grad():
                hm = self.text_m.fuse(self.text_m.encode_text(masked, mask), mask, image_embeds_m)
                logits_m = self.mlm_head_m(hm[sel], self.text_m.embeddings.word.weight)
        return L.mlm_loss(logits, labels[sel], logits_m, alpha)

    def _lm(self, image_embeds, ids, mask) -> torch.Tensor:
        h = self.decoder(self.text, ids, mask, image_embeds)
        sel = mask[:, 1:].bool()  # position t predicts token t+1 where that token is real
        logits = self.decoder.head(h[:, :-1][sel], self.text.embeddings.word.weight)
        return L.lm_loss(logits, ids[:, 1:][sel], self.cfg.label_smoothing)
