"""Small heads over CLIP image embeddings (NSFW, watermark, aesthetic), in the formats LAION
published them, and a fitter that writes the same formats.

Formats `load_head` recognises (by the keys of the file, not its name):

* `weight`/`bias`: one linear layer, e.g. LAION's `sa_0_4_vit_b_32_linear.pth` aesthetic head.
  With more than one output, `positive_class` picks the class whose softmax is the score.
* `layers.N.weight`/`layers.N.bias`: an `nn.Sequential` MLP, as improved-aesthetic-predictor
  (768->1024->128->64->16->1) and LAION's ViT-H-14 NSFW head store it. Layers without weights
  (ReLU, Dropout) still take an index, so the gaps between the Linear indices tell whether a
  ReLU follows: a gap of 3 is ReLU+Dropout, a gap of 2 after such layers is a ReLU; when no gap
  is 3, the net has no activations (improved-aesthetic's "linearMSE" heads: Dropout only).
* `norm.mean`/`norm.variance` + `linear_1..k`: LAION's PyTorch port of the CLIP-based NSFW
  detector (a Keras Normalization layer, ReLU between Dense layers, sigmoid output).
* `.npz` with `norm_mean`, `norm_variance` (optional) and `dense_0_kernel`, `dense_0_bias`, ...
  in Keras layout (kernel is in x out): the dense layers of the Keras `clip_autokeras_binary_nsfw`
  model, exported where TensorFlow is installed (README "Image tags" has the snippet), so this
  project never needs TensorFlow. `output` (a 0-d string) names the last activation.

A JSON sidecar (`<file>.json`, written by `mmcurate train-head`) may name the head, its output
transform, positive class and the CLIP model its embeddings came from.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

Output = Literal["identity", "sigmoid", "softmax"]
OUTPUTS = ("identity", "sigmoid", "softmax")


class HeadFormatError(ValueError):
    """A file that is not a head this module can run on CLIP embeddings; says what to do."""


class TagHead(nn.Module):
    """(x - mean) / sqrt(var) -> Linear [-> ReLU] ... Linear -> output transform -> one score.

    `relu[i]` says whether a ReLU follows linear i (never after the last). Inputs are
    L2-normalised first, as every LAION head expects."""

    def __init__(self, linears: Sequence[nn.Linear], relu: Sequence[bool], output: Output = "identity",
                 positive_class: int | None = None, mean: torch.Tensor | None = None,
                 variance: torch.Tensor | None = None, eps: float = 1e-10):
        super().__init__()
        if len(relu) != len(linears):
            raise ValueError("one relu flag per linear layer")
        self.linears = nn.ModuleList(linears)
        self.relu = list(relu)
        self.output = output
        out_dim = linears[-1].out_features
        if output == "softmax" and positive_class is None:
            raise HeadFormatError(f"the head has {out_dim} outputs; set positive_class to the index of the "
                                  "class whose probability is the score")
        if positive_class is not None and not 0 <= positive_class < out_dim:
            raise HeadFormatError(f"positive_class {positive_class} but the head has {out_dim} outputs")
        if out_dim > 1 and output != "softmax":
            raise HeadFormatError(f"the head has {out_dim} outputs; use output: softmax with positive_class")
        self.positive_class = positive_class if positive_class is not None else 0
        self.has_norm = mean is not None
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0))
        self.register_buffer("variance", variance if variance is not None else torch.zeros(0))
        self.eps = eps

    @property
    def in_dim(self) -> int:
        return self.linears[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x.float(), dim=-1)
        if self.has_norm:
            x = (x - self.mean) / (self.variance.sqrt() + self.eps)
        for lin, act in zip(self.linears, self.relu):
            x = lin(x)
            if act:
                x = torch.relu(x)
        if self.output == "softmax":
            return torch.softmax(x, dim=-1)[:, self.positive_class]
        x = x[:, 0]
        return torch.sigmoid(x) if self.output == "sigmoid" else x


@dataclass
class LoadedHead:
    head: TagHead
    name: str
    format: str
    path: str
    clip_model: str | None = None   # the embedding model it was fitted on, when known
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return self.head.in_dim

    def score(self, emb: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(emb), batch_size):
                out.append(self.head(torch.from_numpy(np.asarray(emb[i:i + batch_size], np.float32))).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _linear(w: Any, b: Any | None) -> nn.Linear:
    w = torch.as_tensor(np.asarray(w, np.float32) if not torch.is_tensor(w) else w.float())
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(torch.as_tensor(np.asarray(b, np.float32)) if not torch.is_tensor(b) else b.float())
    return lin


def _check_chain(linears: list[nn.Linear], path: str) -> None:
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise HeadFormatError(f"{path}: layer sizes do not chain ({a.out_features} -> {b.in_features})")


def _sequential_relu(indices: list[int]) -> list[bool]:
    gaps = [b - a for a, b in zip(indices, indices[1:])]
    if 3 not in gaps:
        return [False] * len(indices)
    return [g >= 2 for g in gaps] + [False]


def _strip(sd: dict[str, Any]) -> dict[str, Any]:
    """Lightning checkpoints nest the weights; DataParallel prefixes them with `module.`."""
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _from_state_dict(sd: dict[str, Any], path: str) -> tuple[list[nn.Linear], list[bool], str, dict]:
    """(linears, relu flags, default output, norm) from a LAION-format state dict."""
    keys = set(sd)
    if {"weight", "bias"} <= keys or keys == {"weight"}:
        return [_linear(sd["weight"], sd.get("bias"))], [False], "identity", {}
    # LAION's modules hold the net as `self.layers`; a bare nn.Sequential saved alone has no prefix.
    pre = "layers." if "layers.0.weight" in keys else "" if "0.weight" in keys else None
    if pre is not None:
        seq = sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(re.escape(pre) + r"(\d+)\.weight", k))})
        lins = [_linear(sd[f"{pre}{i}.weight"], sd.get(f"{pre}{i}.bias")) for i in seq]
        return lins, _sequential_relu(seq), "identity", {}
    lin_ids = sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(r"linear_(\d+)\.weight", k))})
    if lin_ids:
        lins = [_linear(sd[f"linear_{i}.weight"], sd.get(f"linear_{i}.bias")) for i in lin_ids]
        norm = {"mean": sd["norm.mean"], "variance": sd["norm.variance"]} if "norm.mean" in keys else {}
        return lins, [True] * (len(lins) - 1) + [False], "sigmoid", norm
    if any(k.startswith(("conv_stem.", "blocks.", "features.", "conv1.")) for k in keys):
        raise HeadFormatError(
            f"{path} holds an image classifier with its own convolutional backbone (e.g. "
            "LAION-5B-WatermarkDetection's EfficientNet-B3), not a head over CLIP embeddings; it cannot "
            "run on the stored embeddings. Fit a CLIP head on labelled examples with `mmcurate train-head`")
    shown = ", ".join(sorted(keys)[:8])
    raise HeadFormatError(f"{path}: unrecognised head format (keys: {shown}); expected weight/bias, "
                          "layers.N.*, or norm.* + linear_N.* (see models/heads.py)")


def _from_npz(path: Path) -> tuple[list[nn.Linear], list[bool], str, dict]:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    ids = sorted(int(m.group(1)) for k in data if (m := re.fullmatch(r"dense_(\d+)_kernel", k)))
    if not ids:
        raise HeadFormatError(f"{path}: no dense_N_kernel arrays; export the Keras model's Dense layers as "
                              "README 'Image tags' shows")
    # Keras kernels are (in, out); torch weights are (out, in).
    lins = [_linear(data[f"dense_{i}_kernel"].T, data.get(f"dense_{i}_bias")) for i in ids]
    norm = {}
    if "norm_mean" in data:
        norm = {"mean": torch.from_numpy(data["norm_mean"].astype(np.float32).reshape(-1)),
                "variance": torch.from_numpy(data["norm_variance"].astype(np.float32).reshape(-1))}
    out = str(data["output"]) if "output" in data else "sigmoid"
    return lins, [True] * (len(lins) - 1) + [False], out, norm


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def load_head(path: str | Path, output: str | None = None, positive_class: int | None = None,
              name: str | None = None) -> LoadedHead:
    """Load a head file; `output`/`positive_class`/`name` override the format's defaults and the
    sidecar's values."""
    p = Path(path)
    if p.is_dir():
        raise HeadFormatError(f"{p} is a directory (a Keras SavedModel such as clip_autokeras_binary_nsfw?); "
                              "export its Dense layers to .npz (README 'Image tags') and give that file")
    if not p.is_file():
        raise FileNotFoundError(f"head file not found: {p} (README 'Image tags': how to obtain or fit one)")
    meta: dict[str, Any] = {}
    side = sidecar_path(p)
    if side.is_file():
        meta = json.loads(side.read_text(encoding="utf-8"))
    if p.suffix == ".npz":
        lins, relu, default_out, norm = _from_npz(p)
        fmt = "keras_npz"
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise HeadFormatError(f"{p} is not a torch state dict ({type(e).__name__}: {e}); a Keras model "
                                  "must be exported to .npz first (README 'Image tags')") from None
        if isinstance(sd, nn.Module):
            sd = sd.state_dict()
        if not isinstance(sd, dict):
            raise HeadFormatError(f"{p} holds a {type(sd).__name__}, not a state dict")
        sd = _strip(sd)
        lins, relu, default_out, norm = _from_state_dict(sd, str(p))
        fmt = ("linear" if "weight" in sd else "sequential" if "layers.0.weight" in sd or "0.weight" in sd
               else "nsfw_torch")
    _check_chain(lins, str(p))
    out = output or meta.get("output") or default_out
    if out not in OUTPUTS:
        raise HeadFormatError(f"{p}: output {out!r}; expected one of {OUTPUTS}")
    pc = positive_class if positive_class is not None else meta.get("positive_class")
    head = TagHead(lins, relu, out, pc, **norm).eval()  # type: ignore[arg-type]
    return LoadedHead(head=head, name=name or meta.get("name") or p.stem, format=fmt, path=str(p),
                      clip_model=meta.get("clip_model"), meta=meta)


# ---- fitting ---------------------------------------------------------------------------------

Task = Literal["binary", "regression"]


def fit_head(x: np.ndarray, y: np.ndarray, task: Task, arch: Literal["linear", "mlp"] = "linear",
             hidden: Sequence[int] = (64,), steps: int = 500, lr: float = 1e-2, weight_decay: float = 1e-4,
             seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """Fit on L2-normalised embeddings; returns (state dict in a LAION layout, output transform).

    Features are standardised while fitting (CLIP embeddings vary little per dimension) and the
    standardisation is folded into the first layer, so the saved head takes raw embeddings like
    LAION's do: `weight`/`bias` for linear, improved-aesthetic's `layers.N` (Linear, ReLU,
    Dropout, ...) for mlp."""
    small = len(x) * (x.shape[1] + sum(hidden if arch == "mlp" else ())) < 50_000_000
    threads = torch.get_num_threads()
    if small:
        # Tiny matmuls: thread hand-offs cost more than the work (10-20x slower on a busy machine).
        torch.set_num_threads(1)
    try:
        return _fit(x, y, task, arch, hidden, steps, lr, weight_decay, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(x: np.ndarray, y: np.ndarray, task: Task, arch: str, hidden: Sequence[int], steps: int, lr: float,
         weight_decay: float, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    torch.manual_seed(seed)
    xt = nn.functional.normalize(torch.as_tensor(np.asarray(x, np.float32)), dim=-1)
    yt = torch.as_tensor(np.asarray(y, np.float32))
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    z = (xt - mu) / sd
    dims = [xt.shape[1], *(hidden if arch == "mlp" else ()), 1]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            mods += [nn.ReLU(), nn.Dropout(0.1)]
    net = nn.Sequential(*mods)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    if task == "binary":
        pos = float(yt.mean())
        if not 0 < pos < 1:
            raise ValueError("binary labels need both classes (0 and 1) among the rows")
        # Balanced loss: the rare class (a few watermarked images) must not be ignored.
        pw = torch.tensor((1 - pos) / pos)
        loss_fn = lambda o, t: nn.functional.binary_cross_entropy_with_logits(o, t, pos_weight=pw)  # noqa: E731
        y_mu, y_sd = 0.0, 1.0
    else:
        y_mu, y_sd = float(yt.mean()), float(yt.std()) + 1e-6
        loss_fn = lambda o, t: nn.functional.mse_loss(o, (t - y_mu) / y_sd)  # noqa: E731
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(z).squeeze(1), yt).backward()
        opt.step()
    net.eval()
    lins = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        first, last = lins[0], lins[-1]
        w = first.weight / sd
        first.bias -= (first.weight * (mu / sd)).sum(1)
        first.weight.copy_(w)
        last.weight *= y_sd  # regression: back to the label's scale
        last.bias.mul_(y_sd).add_(y_mu)
    output = "sigmoid" if task == "binary" else "identity"
    if arch == "linear":
        return {"weight": lins[0].weight.detach().clone(), "bias": lins[0].bias.detach().clone()}, output
    return {f"layers.{k}": v.detach().clone() for k, v in net.state_dict().items()}, output


def save_head(state: dict[str, torch.Tensor], path: str | Path, meta: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, p)
    sidecar_path(p).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return p
