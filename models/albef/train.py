"""Training loop: single process, or data-parallel workers through Ray Train's TorchTrainer
(DDP, gloo on CPU / nccl on GPU). Both paths run the same `_loop`.

Schedule: AdamW, linear warmup then cosine decay; alpha (momentum distillation weight) ramps
from 0 to its configured value over the first epoch, as ALBEF does. bf16 autocast on GPU.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint as C
from .config import AlbefConfig, load_config
from .data import EpochSampler, ShardDataset, gpu_augment, make_loader
from .distributed import batch_sizes
from .model import AlbefModel
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)


def prepare_tokenizer(cfg: AlbefConfig, data, out: Path, resume: bool) -> TextTokenizer:
    """The checkpoint's tokenizer on resume, a local HF one when configured, else one trained on
    the shards' captions. Saved to out/tokenizer either way."""
    saved = out / "tokenizer"
    if resume and saved.is_dir():
        return TextTokenizer.load(saved)
    src = cfg.text.tokenizer or cfg.text.pretrained
    if src and any((Path(src) / f).exists() for f in ("tokenizer.json", "vocab.txt")):
        tok = TextTokenizer.load(src)
    else:
        ds = ShardDataset(data, load_size=8)
        captions = [c for i in range(len(ds)) if (c := ds.read_caption(i)) is not None]
        tok = TextTokenizer.train(captions, vocab_size=cfg.train.tokenizer_vocab)
    tok.save(saved)
    return tok


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def build_model(cfg: AlbefConfig, tok: TextTokenizer, fresh: bool) -> AlbefModel:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every worker
    model = AlbefModel(cfg, tok.token_ids())
    if fresh and (cfg.vision.pretrained or cfg.text.pretrained):
        from .pretrained import load_pretrained
        load_pretrained(model, cfg)
    return model


def train(config: AlbefConfig | str | Path, data, out: str | Path, *, steps: int | None = None,
          epochs: float | None = None, batch_size: int | None = None, lr: float | None = None,
          resume: bool = False, ray_address: str | None = None, num_workers: int | None = None,
          use_gpu: bool = False, loader_workers: int | None = None, save_every: int | None = None,
          progress: bool = True, stop_at: int | None = None, init_from: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on WebDataset shards `data` (dir, tar, glob or list) and write checkpoints to `out`.

    Runs in this process unless `num_workers` or `ray_address` is given, in which case Ray Train
    starts `num_workers` DDP workers (default 1) on the cluster. `stop_at` ends the run (after
    saving) at that step while keeping the schedule of the full run, as an interruption would;
    continue with `resume=True`. `init_from` starts from another checkpoint's weights, config
    and tokenizer (a fine-tune, e.g. the bootstrap's separate filter and captioner copies) with
    top-level config `overrides` such as {"loss_weights": {...}}. Returns the final metrics:
    {"step", "losses": per-step total losses, "last": last loss terms, "bad_samples"}.
    """
    cfg = config if isinstance(config, AlbefConfig) else load_config(config)
    if init_from is not None:
        init_from = Path(init_from).resolve()
        if not (init_from / "model.pt").exists():
            raise FileNotFoundError(f"init_from {init_from} is not a checkpoint (no model.pt)")
        base = AlbefConfig.from_json((init_from / "config.json").read_text())
        cfg = base.model_copy(update={"train": cfg.train})
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    t = cfg.train
    updates = {k: v for k, v in (("batch_size", batch_size), ("lr", lr),
                                 ("loader_workers", loader_workers), ("save_every", save_every))
               if v is not None}
    cfg = cfg.model_copy(update={"train": t.model_copy(update=updates)})
    if cfg.text.pretrained:
        from .pretrained import apply_text_config
        cfg = apply_text_config(cfg)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / "config.json").exists():
        saved = AlbefConfig.from_json((out / "config.json").read_text())
        cfg = saved.model_copy(update={"train": cfg.train})
    if init_from is not None and not (out / "tokenizer").is_dir():
        shutil.copytree(init_from / "tokenizer", out / "tokenizer")
    tok = prepare_tokenizer(cfg, data, out, resume or init_from is not None)
    cfg = cfg.model_copy(update={"text": cfg.text.model_copy(update={"vocab_size": tok.vocab_size})})
    C.save_config(out, cfg)
    if steps is None and epochs is None:
        epochs = 1
    args = dict(cfg_json=cfg.to_json(), data=[str(p) for p in data] if isinstance(data, list) else str(data),
                out=str(out), steps=steps, epochs=epochs, resume=resume, use_gpu=use_gpu,
                progress=progress, stop_at=stop_at,
                init_from=str(init_from) if init_from is not None else None)
    if num_workers is None and ray_address is None:
        return _loop(**args)
    return _ray_train(args, num_workers or 1, ray_address, use_gpu)


def _ray_train(args: dict, num_workers: int, ray_address: str | None, use_gpu: bool) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=True)
    trainer = TorchTrainer(
        train_loop_per_worker=_ray_worker,
        train_loop_config=args,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(storage_path=str(Path(args["out"]) / "ray"), name="train"),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    # Rank 0 writes its metrics next to the checkpoint (out/ is shared storage on a cluster);
    # Ray Train only keeps reported metrics that come with a Ray checkpoint.
    return json.loads((Path(args["out"]) / "train_metrics.json").read_text())


def _ray_worker(args: dict) -> None:
    import ray.train
    metrics = _loop(**args)
    ray.train.report(metrics)


def _loop(cfg_json: str, data, out: str, steps: int | None, epochs: float | None, resume: bool,
          use_gpu: bool, progress: bool, stop_at: int | None = None,
          init_from: str | None = None) -> dict[str, Any]:
    cfg = AlbefConfig.from_json(cfg_json)
    t = cfg.train
    out_dir = Path(out)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if use_gpu and torch.cuda.is_available():
        local = int(__import__("os").environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    tok = TextTokenizer.load(out_dir / "tokenizer")
    resuming = resume and (out_dir / "train_state.pt").exists()
    model = build_model(cfg, tok, fresh=not resuming and init_from is None)
    if init_from is not None and not resuming:
        weights = torch.load(Path(init_from) / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(weights["model"])
    model = model.to(device)
    ds = ShardDataset(data, load_size=t.load_size, seed=t.seed)
    sampler = EpochSampler(len(ds), t.batch_size, rank, world, seed=t.seed)
    per_epoch = sampler.batches_per_epoch
    total = steps if steps is not None else max(1, int(round(epochs * per_epoch)))
    end = min(total, stop_at) if stop_at is not None else total

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name == "temp" else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=t.lr,
                                  fused=True)  # the per-tensor CPU default costs ~10% of a tiny step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.warmup_steps, total, t.min_lr_ratio))
    step = C.load_training(out_dir, model, optimizer, scheduler, rank) if resuming else 0
    torch.manual_seed(t.seed * 7919 + rank + 1) if not resuming else None

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=any(v == 0 for v in cfg.loss_weights.values()))

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True)
    amp = device.type == "cuda"
    history: list[float] = []
    last: dict[str, float] = {}
    bad = 0
    model.train()
    while step < end:
        epoch = step // per_epoch
        sampler.set_epoch(epoch, step % per_epoch)
        loader = make_loader(ds, sampler, t.loader_workers,
                             generator=torch.Generator().manual_seed(t.seed + epoch))
        tick = time.perf_counter()
        for batch in loader:
            if step >= end:
                break
            if batch["errors"]:
                bad += len(batch["errors"])
                log.warning("step %d: %d bad samples skipped, e.g. %s", step, len(batch["errors"]),
                            batch["errors"][0])
            n = len(batch["captions"])
            # Workers' batches differ in size where corrupt samples were dropped (the gathers
            # take that); all workers see the same sizes, so all take the same skip decision.
            sizes = batch_sizes(n, device)
            if min(sizes) == 0 or sum(sizes) < 2:
                step += 1
                continue
            offset, global_n = sum(sizes[:rank]), sum(sizes)
            gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
            images = gpu_augment(batch["images"].to(device, non_blocking=True),
                                 cfg.vision.image_size, tuple(t.crop_scale), generator=gen,
                                 offset=offset, total=global_n)
            ids, mask = tok(batch["captions"], cfg.text.max_len)
            ids, mask = ids.to(device), mask.to(device)
            alpha = cfg.alpha * min(1.0, step / per_epoch) if epoch == 0 else cfg.alpha
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                terms = net(images, ids, mask, alpha=alpha)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over workers; weighting each worker's mean loss by its share
            # of the global batch makes that average the gradient of the global batch's mean.
            share = n * world / global_n
            (terms["loss"] * share).backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            # Reported terms are the global batch's means, as one process would print them.
            values = torch.stack([v.detach().float() for v in terms.values()]) * (share / world)
            if world > 1:
                dist.all_reduce(values)
            last = dict(zip(terms, values.tolist()))
            history.append(last["loss"])
            if bar is not None:
                now = time.perf_counter()
                bar.update(1)
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in last.items()},
                                 "samples/s": f"{global_n / max(now - tick, 1e-9):.1f}"})
                tick = now
            if t.save_every and step % t.save_every == 0 and step < end:
                C.save_training(out_dir, model, optimizer, scheduler, step, rank)
    C.save_training(out_dir, model, optimizer, scheduler, step, rank)
    if distributed:
        dist.barrier()
    if bar is not None:
        bar.close()
    metrics = {"step": step, "losses": history, "last": last, "bad_samples": bad}
    if rank == 0:
        (out_dir / "train_metrics.json").write_text(json.dumps(metrics))
    return metrics
