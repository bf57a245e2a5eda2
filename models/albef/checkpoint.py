"""Checkpoint layout (a directory; every file loads with `torch.load(weights_only=True)`):

    config.json        AlbefConfig as JSON
    tokenizer/         HF tokenizer files
    model.pt           {"model": state_dict (incl. momentum copies and queues), "step": int}
    train_state.pt     {"optimizer", "scheduler", "step", "rng"} (rank 0)
    rng/rank{r}.pt     each worker's RNG states, for exact resume
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .config import AlbefConfig
from .model import AlbefModel
from .tokenizer import TextTokenizer


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy and python states as plain ints so weights_only loading accepts them
        "numpy": [int(x) for x in np_state[1]] + [int(np_state[2])],
        "python": [int(x) for x in random.getstate()[1]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy"):
        np.random.set_state(("MT19937", np.array(state["numpy"][:-1], dtype=np.uint32),
                             state["numpy"][-1], 0, 0.0))
    if state.get("python"):
        random.setstate((3, tuple(state["python"]), None))


def save_config(out: Path, cfg: AlbefConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "config.json.tmp"
    tmp.write_text(cfg.to_json())
    os.replace(tmp, out / "config.json")


def save_training(out: Path, model: AlbefModel, optimizer, scheduler, step: int, rank: int) -> None:
    (out / "rng").mkdir(parents=True, exist_ok=True)
    _atomic_save(rng_state(), out / "rng" / f"rank{rank}.pt")
    if rank != 0:
        return
    _atomic_save({"model": model.state_dict(), "step": step}, out / "model.pt")
    _atomic_save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "step": step}, out / "train_state.pt")


def load_training(out: Path, model: AlbefModel, optimizer, scheduler, rank: int) -> int:
    """Restore everything saved by `save_training`; returns the step to continue from."""
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    if weights["step"] != state["step"]:
        raise RuntimeError(f"{out}: model.pt is at step {weights['step']} but train_state.pt at "
                           f"{state['step']} (interrupted save); delete train_state.pt to restart "
                           "from the weights, or restore a consistent copy")
    model.load_state_dict(weights["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = out / "rng" / f"rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return int(state["step"])


def load_model(ckpt: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[AlbefModel, TextTokenizer, AlbefConfig]:
    ckpt = Path(ckpt)
    for need in ("config.json", "tokenizer", "model.pt"):
        if not (ckpt / need).exists():
            raise FileNotFoundError(f"{ckpt} is not an ALBEF checkpoint: {need} is missing")
    cfg = AlbefConfig.from_json((ckpt / "config.json").read_text())
    tok = TextTokenizer.load(ckpt / "tokenizer")
    model = AlbefModel(cfg, tok.token_ids())
    weights = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(weights["model"])
    return model.to(device).eval(), tok, cfg
