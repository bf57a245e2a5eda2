"""Tiny random-init models saved in the layouts the backends load, for tests and demos that
must run offline (no hub). Not for real scoring: the weights are random."""
from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Enough of a BERT vocab to tokenize the synthetic corpus's Chinese captions.
_CJK = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能"
        "下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量"
        "都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重"
        "新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已"
        "通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将"
        "组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热"
        "领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清美再采转更单风切打白教速花带安"
        "场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群"
        "广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半"
        "办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查"
        "江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙黄绿蓝紫黑"
        "灰粉橙方圆形三角星条纹点格张图片照查看网页猫狗鸟车树花草房")


def tiny_open_clip_dir(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init open_clip model in open_clip's local-dir layout (config + state dict)."""
    import open_clip
    import torch

    from models.clip.open_clip_backend import save_open_clip_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Build through create_model so the config is the one open_clip will read back.
    save_open_clip_dir(_build_open_clip(open_clip, out), TINY_OPEN_CLIP_CFG, out)
    return out


def _build_open_clip(open_clip: Any, out: Path) -> Any:
    import json

    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG}))
    return open_clip.create_model(f"local-dir:{out}", pretrained_text=False)


def tiny_chinese_clip_dir(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init ChineseCLIPModel + BERT tokenizer + image processor, saved offline."""
    import torch
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel
    from transformers.models.chinese_clip import ChineseCLIPImageProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(dict.fromkeys(_CJK))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + list("abcdefghijklmnopqrstuvwxyz0123456789")
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained on a dir holding vocab.txt works across transformers 4.x and 5.x, whose
    # BertTokenizer constructors differ (vocab_file= vs vocab=).
    tok = BertTokenizer.from_pretrained(str(out))
    cfg = ChineseCLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "intermediate_size": 64,
                     "max_position_embeddings": 64},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(seed)
    ChineseCLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    ChineseCLIPImageProcessor(size={"height": 32, "width": 32},
                              crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out
