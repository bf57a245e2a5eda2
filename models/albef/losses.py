"""ALBEF / BLIP loss pieces as pure tensor functions (no module state), so each is testable.

* ITC with momentum distillation: targets = alpha * softmax(momentum similarities) +
  (1 - alpha) * one-hot of the true pair, over [batch of momentum features + queue].
* ITM hard negatives: for each image one text (and for each text one image) drawn with
  probability proportional to softmax(ITC similarity), never the pair itself nor any pair whose
  caption is identical (that would be a positive labelled as negative).
* MLM: BERT masking (15%, then 80% [MASK] / 10% random / 10% kept), never on special tokens;
  soft pseudo-targets from the momentum model mixed in with weight alpha.
* LM: next-token cross entropy with label smoothing (BLIP uses 0.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def itc_loss(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, sim_i2t_m: torch.Tensor,
             sim_t2i_m: torch.Tensor, pos_index: torch.Tensor, alpha: float) -> torch.Tensor:
    """sim_*: (b, bank) logits already divided by the temperature; pos_index: (b,) column of the
    true pair in the bank. Returns the mean of the image->text and text->image losses."""
    onehot = F.one_hot(pos_index, sim_i2t.shape[1]).to(sim_i2t.dtype)
    with torch.no_grad():
        t_i2t = alpha * F.softmax(sim_i2t_m.float(), dim=1) + (1 - alpha) * onehot
        t_t2i = alpha * F.softmax(sim_t2i_m.float(), dim=1) + (1 - alpha) * onehot
    loss_i2t = -(F.log_softmax(sim_i2t.float(), dim=1) * t_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i.float(), dim=1) * t_t2i).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


@dataclass
class HardNegatives:
    text_index: torch.Tensor   # (b,) negative text (global index) for each local image
    image_index: torch.Tensor  # (b,) negative image (global index) for each local text
    text_valid: torch.Tensor   # (b,) bool: False when no candidate other than positives existed
    image_valid: torch.Tensor


@torch.no_grad()
def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, same: torch.Tensor,
                          generator: torch.Generator | None = None) -> HardNegatives:
    """sim_i2t: (b, G) local images vs the global batch's texts; sim_t2i: (b, G) local texts vs
    global images; same: (b, G) bool, True where the candidate is a positive (the pair itself or
    an identical caption). ALBEF adds 1e-4 so that a confident model still explores."""
    def draw(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = (F.softmax(sim.float(), dim=1) + 1e-4).masked_fill(same, 0.0)
        valid = w.sum(1) > 0
        # A row with only positives cannot have a negative; draw anything and mark it invalid.
        w = torch.where(valid[:, None], w, torch.ones_like(w))
        return torch.multinomial(w, 1, generator=generator).squeeze(1), valid

    text_index, text_valid = draw(sim_i2t)
    image_index, image_valid = draw(sim_t2i)
    return HardNegatives(text_index, image_index, text_valid, image_valid)


def same_caption(ids: torch.Tensor, ids_all: torch.Tensor) -> torch.Tensor:
    """(b, L), (G, L) token ids -> (b, G) bool: identical token sequences."""
    return (ids[:, None, :] == ids_all[None, :, :]).all(-1)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    per = F.cross_entropy(logits.float(), labels, reduction="none")
    return (per * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def mask_tokens(ids: torch.Tensor, special_ids: torch.Tensor, mask_id: int, vocab_size: int,
                probability: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking. Returns (masked ids, labels) with labels -100 where nothing is predicted.
    Special tokens ([CLS], [SEP], [PAD], ...) are never chosen nor used as random replacements."""
    dev = ids.device

    def rand(shape):
        return torch.rand(shape, generator=generator, device=dev)

    special = torch.isin(ids, special_ids)
    chosen = (rand(ids.shape) < probability) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    out = ids.clone()
    r = rand(ids.shape)
    to_mask = chosen & (r < 0.8)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    out[to_mask] = mask_id
    keep = torch.ones(vocab_size, dtype=torch.bool, device=dev)
    keep[special_ids[special_ids < vocab_size]] = False
    candidates = keep.nonzero().squeeze(1)
    pick = torch.randint(len(candidates), (int(to_random.sum()),), generator=generator, device=dev)
    out[to_random] = candidates[pick]
    return out, labels


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor, logits_m: torch.Tensor | None,
             alpha: float) -> torch.Tensor:
    """logits, logits_m: (n, vocab) at the masked positions only; targets: (n,)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    loss = F.cross_entropy(logits.float(), targets)
    if logits_m is None or alpha == 0:
        return loss
    soft = F.softmax(logits_m.float(), dim=-1)
    distill = -(F.log_softmax(logits.float(), dim=-1) * soft).sum(-1).mean()
    return (1 - alpha) * loss + alpha * distill


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """logits (n, vocab) at positions whose next token is a real token; targets (n,)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
