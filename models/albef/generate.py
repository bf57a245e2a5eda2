"""Caption generation with the image-grounded decoder: nucleus sampling (BLIP's CapFilt uses
it for diverse synthetic captions) or beam search. The sequence is re-run each step without a
key/value cache: captions are short (<= ~30 tokens), so the simpler loop costs little.
`row_ban` ((B, V) bool, one row per image) bans tokens per image, e.g. the other language's;
`start_ban` ((V,) bool) bans tokens as the first one, e.g. WordPiece continuation pieces.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import AlbefModel


def _step_logits(model: AlbefModel, ids: torch.Tensor, image_embeds: torch.Tensor,
                 banned: torch.Tensor, sep: int, allow_sep: bool,
                 row_ban: torch.Tensor | None = None,
                 start_ban: torch.Tensor | None = None) -> torch.Tensor:
    mask = torch.ones_like(ids)
    logits = model.decoder_logits(ids, mask, image_embeds)[:, -1].float()
    logits[:, banned] = float("-inf")
    if row_ban is not None:
        w = min(row_ban.shape[1], logits.shape[1])
        logits[:, :w].masked_fill_(row_ban[:, :w], float("-inf"))
    if start_ban is not None and ids.shape[1] == 1:  # only [CLS] so far
        w = min(start_ban.shape[0], logits.shape[1])
        logits[:, :w].masked_fill_(start_ban[:w].to(logits.device), float("-inf"))
    if not allow_sep:
        logits[:, sep] = float("-inf")
    return logits


@torch.no_grad()
def sample(model: AlbefModel, image_embeds: torch.Tensor, n: int = 1, top_p: float = 0.9,
           max_len: int = 30, min_len: int = 3, generator: torch.Generator | None = None,
           row_ban: torch.Tensor | None = None, start_ban: torch.Tensor | None = None
           ) -> list[list[list[int]]]:
    """Nucleus sampling: n token-id sequences per image (without [CLS]/[SEP])."""
    tk = model.tokens
    b = image_embeds.shape[0]
    emb = image_embeds.repeat_interleave(n, dim=0)
    ids = torch.full((b * n, 1), tk.cls, dtype=torch.long, device=emb.device)
    done = torch.zeros(b * n, dtype=torch.bool, device=emb.device)
    banned = torch.tensor([s for s in tk.special if s != tk.sep], device=emb.device)
    ban = None if row_ban is None else row_ban.to(emb.device).repeat_interleave(n, dim=0)
    for t in range(max_len):
        logits = _step_logits(model, ids, emb, banned, tk.sep, t >= min_len, ban, start_ban)
        probs = F.softmax(logits, dim=-1)
        sp, si = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = (sp.cumsum(-1) - sp) < top_p
        sp = sp * keep
        choice = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=generator)
        nxt = si.gather(1, choice).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, tk.pad), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == tk.sep
        if done.all():
            break
    seqs = [_strip(row.tolist(), tk.sep, tk.pad) for row in ids[:, 1:]]
    return [seqs[i * n:(i + 1) * n] for i in range(b)]


@torch.no_grad()
def beam_search(model: AlbefModel, image_embeds: torch.Tensor, beam: int = 3, n: int = 1,
                max_len: int = 30, min_len: int = 3, row_ban: torch.Tensor | None = None,
                start_ban: torch.Tensor | None = None) -> list[list[list[int]]]:
    """Beam search with length-normalised scores; the n best finished beams per image."""
    if n > beam:
        raise ValueError(f"cannot return n={n} captions from beam={beam}; use n <= beam")
    tk = model.tokens
    b = image_embeds.shape[0]
    dev = image_embeds.device
    emb = image_embeds.repeat_interleave(beam, dim=0)
    ids = torch.full((b * beam, 1), tk.cls, dtype=torch.long, device=dev)
    scores = torch.full((b, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    done = torch.zeros(b * beam, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * beam, device=dev)
    banned = torch.tensor([s for s in tk.special if s != tk.sep], device=dev)
    # beams are reordered within an image only, so the per-image ban stays aligned
    ban = None if row_ban is None else row_ban.to(dev).repeat_interleave(beam, dim=0)
    for t in range(max_len):
        logp = F.log_softmax(_step_logits(model, ids, emb, banned, tk.sep, t >= min_len, ban, start_ban),
                             dim=-1)
        vocab = logp.shape[-1]
        # a finished beam can only be extended by padding, at no cost
        logp[done] = float("-inf")
        logp[done, tk.pad] = 0.0
        total = (scores.view(-1, 1) + logp).view(b, beam * vocab)
        top, idx = total.topk(beam, dim=-1)
        src = (idx // vocab) + torch.arange(b, device=dev)[:, None] * beam
        tok = (idx % vocab).view(-1)
        src = src.view(-1)
        ids = torch.cat([ids[src], tok[:, None]], dim=1)
        lengths = lengths[src] + (~done[src]).float()
        done = done[src] | (tok == tk.sep)
        scores = top
        if done.all():
            break
    norm = (scores.view(-1) / lengths.clamp(min=1)).view(b, beam)
    order = norm.argsort(dim=-1, descending=True)[:, :n]
    out = []
    for i in range(b):
        out.append([_strip(ids[i * beam + j, 1:].tolist(), tk.sep, tk.pad) for j in order[i].tolist()])
    return out


def _strip(ids: list[int], sep: int, pad: int) -> list[int]:
    if sep in ids:
        ids = ids[:ids.index(sep)]
    return [i for i in ids if i != pad]
