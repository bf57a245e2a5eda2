"""Training throughput of one process: samples/s and model FLOPs utilisation (MFU).

Runs full training steps (GPU augmentation, every loss, momentum update, queue, AdamW) on
random data so the figure is the model's, not the disk's. FLOPs per step are counted once with
torch.utils.flop_counter (matmuls, convolutions and SDPA, forward + backward, including the
momentum encoder's forward), and MFU = FLOPs/step x steps/s / peak.

    python bench/train_speed.py                         # albef-base, 224 px, bf16 on the GPU
    python bench/train_speed.py --config tiny --steps 5 # CPU check
"""
from __future__ import annotations

import argparse
import time

import torch

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_for(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="albef-base")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--seq-len", type=int, default=None, help="caption tokens (default text.max_len)")
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs)")
    args = ap.parse_args()

    from models.albef.config import load_config
    from models.albef.data import gpu_augment
    from models.albef.model import AlbefModel, TokenIds

    dev = torch.device(args.device)
    cfg = load_config(args.config, {"text.vocab_size": args.vocab,
                                    "grad_checkpointing": args.grad_checkpointing})
    bs = args.batch_size or cfg.train.batch_size
    seq = args.seq_len or cfg.text.max_len
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = AlbefModel(cfg, TokenIds(pad=0, cls=101, sep=102, mask=103, special=(0, 100, 101, 102, 103)))
    model.to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    raw = torch.randint(0, 256, (bs, 3, cfg.train.load_size, cfg.train.load_size), dtype=torch.uint8, device=dev)
    ids = torch.randint(1000, args.vocab, (bs, seq), device=dev)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    amp = dev.type == "cuda"

    def step() -> None:
        images = gpu_augment(raw, cfg.vision.image_size, tuple(cfg.train.crop_scale))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(images, ids, mask, alpha=0.4)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"config {cfg.name}: {cfg.vision.image_size}px ViT {cfg.vision.layers}x{cfg.vision.width}, "
          f"text {cfg.text.text_layers}+{cfg.text.fusion_layers}x{cfg.text.hidden}, "
          f"{n_params / 1e6:.1f}M trainable params, queue {cfg.queue_size}")
    print(f"device {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, "
          f"{'bf16 autocast' if amp else 'fp32'}, batch {bs}, {seq} tokens, "
          f"grad checkpointing {'on' if args.grad_checkpointing else 'off'}")
    achieved = flops / dt / 1e12
    print(f"step {dt * 1000:.1f} ms, {bs / dt:.1f} samples/s, {flops / 1e12:.3f} TFLOP/step, "
          f"{achieved:.2f} TFLOP/s achieved")
    peak = args.peak_tflops or peak_for(dev)
    if peak:
        print(f"MFU {100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s bf16 peak")
    else:
        print("MFU: unknown peak for this device (pass --peak-tflops)")
    if dev.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
