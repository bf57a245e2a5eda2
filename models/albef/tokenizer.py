"""Text tokenizer: a local HF tokenizer directory, or a WordPiece vocabulary trained offline on
the shards' captions with the `tokenizers` library (BERT normalisation: lower-case, and CJK
characters split one by one as bert-base-chinese does). It is saved with every checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import BertWordPieceTokenizer
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

from filters.scripts import HAN_RE, LATIN_LETTER_RE

from .model import TokenIds

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TextTokenizer:
    def __init__(self, hf: PreTrainedTokenizerBase):
        self.hf = hf
        missing = [n for n in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
                   if getattr(hf, n) is None]
        if missing:
            raise ValueError(f"tokenizer lacks {missing}: ALBEF needs a BERT-style tokenizer with "
                             "[PAD], [CLS], [SEP] and [MASK]")

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory {path} does not exist")
        return cls(AutoTokenizer.from_pretrained(str(path)))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> "TextTokenizer":
        wp = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True,
                                    strip_accents=None, lowercase=True)
        wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                               special_tokens=SPECIAL, show_progress=False)
        # The trainer's id order varies from run to run (hash-map iteration); WordPiece's
        # greedy longest match depends only on the vocabulary set, so renumber it sorted to
        # make the same captions always give the same ids.
        learned = sorted(t for t in wp.get_vocab() if t not in SPECIAL)
        wp = BertWordPieceTokenizer({t: i for i, t in enumerate(SPECIAL + learned)}, clean_text=True,
                                    handle_chinese_chars=True, strip_accents=None, lowercase=True)
        hf = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                               pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                               do_lower_case=True, tokenize_chinese_chars=True)
        return cls(hf)

    def save(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def token_ids(self) -> TokenIds:
        h = self.hf
        return TokenIds(pad=h.pad_token_id, cls=h.cls_token_id, sep=h.sep_token_id,
                        mask=h.mask_token_id, special=tuple(sorted(set(h.all_special_ids))))

    def __call__(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (input_ids, attention_mask), each (B, L) long, [CLS] ... [SEP] then padding.
        Padding goes to the longest text in the batch (at most `max_len`)."""
        enc = self.hf(list(texts), padding="longest", truncation=True, max_length=max_len,
                      return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def off_script_tokens(self, lang: str | None) -> torch.Tensor | None:
        """Bool mask over the vocabulary of tokens that cannot appear in a `lang` caption: any
        token with a Han character for "en", any with a Latin letter for "zh"; None for other
        languages. Banning them at decode time keeps a bilingual decoder in the row's language."""
        base = str(lang or "").lower().split("-")[0]
        if base not in ("en", "zh"):
            return None
        cache = self.__dict__.setdefault("_script_masks", {})
        if base not in cache:
            vocab = self.hf.get_vocab()
            mask = torch.zeros(max(len(self.hf), max(vocab.values()) + 1), dtype=torch.bool)
            bad = _has_han if base == "en" else _has_latin
            for tok, i in vocab.items():
                mask[i] = bad(tok.removeprefix("##"))
            cache[base] = mask
        return cache[base]

    def continuation_tokens(self) -> torch.Tensor:
        """Bool mask of WordPiece continuation pieces ("##…"): a caption cannot start with one."""
        if "_continuation" not in self.__dict__:
            vocab = self.hf.get_vocab()
            mask = torch.zeros(max(len(self.hf), max(vocab.values()) + 1), dtype=torch.bool)
            for tok, i in vocab.items():
                mask[i] = tok.startswith("##")
            self.__dict__["_continuation"] = mask
        return self.__dict__["_continuation"]

    def decode(self, ids: list[int]) -> str:
        text = self.hf.decode(ids, skip_special_tokens=True)
        return _join_cjk(text)


def _join_cjk(text: str) -> str:
    """WordPiece decoding puts spaces between CJK characters; Chinese captions have none."""
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == " " and 0 < i < len(text) - 1 and _is_cjk(text[i - 1]) and _is_cjk(text[i + 1]):
            continue
        out.append(ch)
    return "".join(out)


def _has_han(tok: str) -> bool:
    return HAN_RE.search(tok) is not None


def _has_latin(tok: str) -> bool:
    return LATIN_LETTER_RE.search(tok) is not None


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF
            or 0x3000 <= cp <= 0x303F or 0xFF00 <= cp <= 0xFFEF)
