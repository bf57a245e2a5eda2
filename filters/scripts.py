"""Which writing system a piece of text uses: Han characters and Latin letters.

Kept apart from `filters.language` (which needs jieba for segmentation) so the model code can use
the same character classes without the segmenter: the captioner's language steering bans exactly
the tokens the language detector would count as the other language.
"""
from __future__ import annotations

import re

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f"
HAN_RE = re.compile(f"[{_HAN}]")
LATIN_LETTER_RE = re.compile("[A-Za-z\u00c0-\u024f]")
