"""A raw public-style sensitive lexicon against clean human-style Chinese captions.

Real public Chinese lexicons mix genuinely sensitive terms with everyday words (一个, 女人, 帽子,
黄色 ...). This bench builds one the same way and measures what the default hygiene does:

* lexicon: `--common` everyday words sampled from jieba's frequency dictionary plus a few
  hundred sensitive terms written here (illicit trade, gambling, fraud, adult, profanity; three
  of them, 毒品 色情 草泥马, are among jieba's 20,000 most frequent words). Two mixes of everyday words: "count-weighted" (drawn in
  proportion to their count, as the everyday entries of real lists are mostly frequent words)
  and "half mid-frequency" (half of them drawn uniformly among the 50,000 most frequent
  entries instead: a stress case, full of words the frequency rule does not exempt);
* a 50,000-entry lexicon for the speed figure: the count-weighted one plus generated phrases
  (two dictionary words joined, drawn by count), the bulk of large real lists being phrases;
* captions: written from image-caption sentence patterns (who / wearing what / where / doing
  what), filled half from a small hand-written caption vocabulary and half from jieba's nouns,
  verbs and adjectives drawn by count; nothing is taken from the lexicon;
* run: the clean captions plus `--inserted` copies carrying one sensitive term each, cleaned by
  `CaptionCleaner` as annotate does, with the share exemption measured on the whole run first.

Prints the share of clean captions altered by the lexicon (goal <= 1%) and the share of inserted
sensitive terms still masked (goal >= 0.97), with no hygiene, each rule alone and the defaults;
then text-rule throughput with a 50,000-entry version of the lexicon (goal >= 20k/s/core).

    .venv/bin/python bench/lexicon_real.py [--captions 5000] [--inserted 2000] [--common 3000]
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters import language  # noqa: E402
from filters.sensitive import (  # noqa: E402
    DEFAULT_COMMON_RANK, DEFAULT_MAX_SHARE, jieba_dict_path, measure_shares, share_exemptions,
)
from filters.text import CaptionCleaner, TextConfig  # noqa: E402

# Sensitive terms, written for this bench: verbs of illicit trade x what is traded, and fixed terms.
_TRADE = ["代开", "出售", "办理", "代办", "高价回收", "低价出", "批发", "专业代做", "网上代购", "私下转让"]
_GOODS = ["发票", "假证", "假驾照", "假学历", "仿真枪", "迷药", "窃听器", "银行卡四件套", "公民信息",
          "考试答案", "军警用品", "信用卡黑户", "网贷黑户", "假币", "手机卡实名", "刀具弩箭",
          "催情药", "电击器", "开锁工具", "透视眼镜"]
_FIXED = ["六合彩", "时时彩开奖", "百家乐平台", "网络博彩", "赌球网址", "博彩返水", "私彩代理", "黑彩网站",
          "裸聊", "约炮", "一夜情", "援交妹", "成人视频", "色情直播", "黄色网站", "裸贷", "套路贷",
          "校园贷", "洗钱通道", "刷单返利", "刷粉丝", "代考包过", "替考枪手", "信用卡套现", "花呗套现",
          "冰毒", "摇头丸", "大麻种子", "麻古", "k粉", "傻逼", "煞笔", "操你妈", "草泥马", "狗日的",
          "王八蛋", "去死吧你", "死全家", "艹你", "尼玛的", "卧槽泥马", "色情", "毒品", "枪支弹药"]

# A small caption vocabulary, written for this bench (the half of each slot not drawn from jieba).
_WHO = ["小女孩", "小男孩", "男人", "女人", "老人", "孩子们", "一家人", "年轻人", "运动员", "小狗",
        "小猫", "两只狗", "一群鸽子", "骑手", "游客", "学生", "厨师", "新娘", "工人", "婴儿"]
_WEAR = ["红色衣服", "蓝色外套", "白色裙子", "黑色帽子", "黄色雨衣", "条纹衬衫", "牛仔裤", "运动服",
         "校服", "绿色背心", "粉色毛衣", "灰色大衣"]
_WHERE = ["草地上", "海边", "公园里", "街道上", "沙滩上", "雪地里", "水中", "桥上", "山坡上", "厨房里",
          "体育场上", "树下", "湖边", "田野里", "广场上", "房间里", "舞台上", "马路边"]
_DO = ["奔跑", "玩耍", "散步", "微笑", "跳跃", "骑自行车", "看书", "拍照", "踢足球", "游泳", "休息",
       "吃东西", "聊天", "等车", "弹吉他", "放风筝", "打篮球", "排队"]
_NUM = ["一个", "一位", "两个", "几个", "一群", "三个"]
_PATTERNS = [
    "{num}穿着{wear}的{who}在{where}{do}",
    "{who}在{where}{do}",
    "{num}{who}正在{where}{do}，旁边有{obj}",
    "{where}有{num}{who}在{do}",
    "一个戴着{wear}的{who}站在{obj}前面",
    "{who}和{who2}在{where}{do}",
    "{who}拿着{obj}在{where}{do}。",
    "{adj}的{who}在{where}{do}",
    "{num}{who}坐在{obj}上{do}",
    "{where}，{who}正在{do}",
    "{who}在{obj}旁边{do}，背景是{obj2}",
    "画面中{num}{who}在{do}",
]


def load_jieba() -> list[tuple[str, int, str]]:
    rows = []
    with jieba_dict_path().open(encoding="utf-8") as f:
        for line in f:
            p = line.split()
            if len(p) >= 3 and p[1].isdigit():
                rows.append((p[0], int(p[1]), p[2]))
    rows.sort(key=lambda r: -r[1])
    return rows


def sensitive_terms() -> list[str]:
    return sorted({t + g for t in _TRADE for g in _GOODS} | set(_FIXED))


def build_lexicon(rows: list[tuple[str, int, str]], n_common: int, rng: random.Random,
                  mid: float = 0.0, phrases: int = 0) -> list[str]:
    """Everyday words (a `mid` share of them uniform over the top 50,000 entries, the rest by
    count), the sensitive terms, and `phrases` generated two-word phrases."""
    han = [r for r in rows if len(r[0]) >= 2 and language.count_han(r[0]) == len(r[0])]
    top = han[:50_000]
    words: set[str] = set()
    cum = list(itertools.accumulate(r[1] for r in han))
    n_mid = int(n_common * mid)
    while len(words) < n_common - n_mid:
        words.add(rng.choices(han, cum_weights=cum, k=1)[0][0])
    while len(words) < n_common:
        words.add(rng.choice(top)[0])
    out = words | set(sensitive_terms())
    target = len(out) + phrases
    while len(out) < target:
        a, b = rng.choices(han, cum_weights=cum, k=2)
        out.add(a[0] + b[0])
    return sorted(out)


class _Drawer:
    """Words of one part of speech from jieba's dictionary (top 50,000 entries), drawn by count."""

    def __init__(self, rows: list[tuple[str, int, str]], tags: set[str], rng: random.Random):
        pool = [r for r in rows[:50_000] if r[2] in tags and 2 <= len(r[0]) <= 4
                and language.count_han(r[0]) == len(r[0])]
        self.words = [r[0] for r in pool]
        self.cum = list(itertools.accumulate(r[1] for r in pool))
        self.rng = rng

    def __call__(self) -> str:
        return self.rng.choices(self.words, cum_weights=self.cum, k=1)[0]


def make_captions(rows: list[tuple[str, int, str]], n: int, rng: random.Random) -> list[str]:
    noun, verb, adj = (_Drawer(rows, t, rng) for t in ({"n"}, {"v"}, {"a"}))

    def pick(hand: list[str], draw: _Drawer) -> str:
        return rng.choice(hand) if rng.random() < 0.5 else draw()

    out = []
    for _ in range(n):
        out.append(rng.choice(_PATTERNS).format(
            num=rng.choice(_NUM), who=pick(_WHO, noun), who2=pick(_WHO, noun), wear=pick(_WEAR, noun),
            where=rng.choice(_WHERE) if rng.random() < 0.5 else noun() + rng.choice(["上", "里", "旁边", "前"]),
            do=pick(_DO, verb), obj=noun(), obj2=noun(), adj=adj()))
    return out


def insert(caption: str, term: str, rng: random.Random) -> str:
    k = rng.randrange(4)
    if k == 0:
        return f"{term} {caption}"
    if k == 1:
        return f"{caption}，{term}"
    if k == 2:
        return f"{caption} {term}请私信"
    cut = caption.find("，")
    return f"{caption[:cut]}，{term}{caption[cut:]}" if cut > 0 else f"【{term}】{caption}"


def evaluate(lex_path: str, clean: list[str], inserted: list[tuple[str, str]], label: str,
             common_rank: int | None, max_share: float | None) -> None:
    cfg = TextConfig(sensitive_lexicon=lex_path, sensitive_common_rank=common_rank)
    cleaner = CaptionCleaner(cfg)
    exempt: dict = {}
    if max_share is not None:
        run = clean + [c for c, _ in inserted]
        n, counts = measure_shares(cleaner.sensitive, (cleaner.sensitive_input(c) for c in run))
        exempt = share_exemptions(counts, n, max_share, strict=cleaner.sensitive.strict)
        cleaner = CaptionCleaner(TextConfig(sensitive_lexicon=lex_path, sensitive_common_rank=common_rank,
                                            sensitive_exempt=tuple(exempt)))
    plain = CaptionCleaner(TextConfig(sensitive_lexicon=""))
    altered = Counter()
    n_alt = 0
    for c in clean:
        r = cleaner.clean(c)
        if r["caption"] != plain.clean(c)["caption"]:
            n_alt += 1
            altered.update(set(r["sensitive_words"]))
    masked = 0
    missed = Counter()
    for c, term in inserted:
        out = cleaner.clean(c)["caption"]
        if term not in out:
            masked += 1
        else:
            missed[term] += 1
    n_ex_common = len(cleaner.sensitive.exempted) - len(exempt)
    print(f"{label:34} clean altered {n_alt:5}/{len(clean)} = {100 * n_alt / len(clean):6.2f}%   "
          f"inserted masked {masked}/{len(inserted)} = {masked / len(inserted):.3f}   "
          f"(exempt: {n_ex_common} everyday, {len(exempt)} by run share)")
    if altered:
        print(f"{'':34} most frequent words altering clean captions: "
              + ", ".join(f"{w} {k}" for w, k in altered.most_common(12)))
    if missed:
        print(f"{'':34} inserted terms left unmasked: " + ", ".join(f"{w} {k}" for w, k in missed.most_common(8)))


def speed(lex_path: str, caps: list[str]) -> None:
    cleaner = CaptionCleaner(TextConfig(sensitive_lexicon=lex_path))
    cleaner.clean_batch(caps[:200])
    dt = float("inf")
    for _ in range(3):  # best of 3: the machine may be shared
        language.segment.cache_clear()
        t = time.process_time()
        cleaner.clean_batch(caps)
        dt = min(dt, time.process_time() - t)
    print(f"speed: all text rules with this 50k lexicon: {len(caps) / dt:8.0f} captions/s/core "
          f"({len(caps)} captions, best of 3, goal >= 20000)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--inserted", type=int, default=2000)
    ap.add_argument("--common", type=int, default=3000, help="everyday words in the raw lexicon")
    ap.add_argument("--big", type=int, default=50_000, help="entries of the lexicon for the speed figure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = load_jieba()
    lex = build_lexicon(rows, args.common, rng)
    lex_mid = build_lexicon(rows, args.common, random.Random(args.seed + 3), mid=0.5)
    terms = sensitive_terms()
    rank = {w: i + 1 for i, (w, _, _) in enumerate(rows)}
    clean = make_captions(rows, args.captions, rng)
    base = make_captions(rows, args.inserted, rng)
    inserted = []
    for c in base:
        t = rng.choice(terms)
        inserted.append((insert(c, t, rng), t))
    in_top = sum(1 for t in terms if rank.get(t, 10**9) <= DEFAULT_COMMON_RANK)
    print(f"lexicon: {len(lex)} entries ({args.common} everyday jieba words, {len(terms)} sensitive terms, "
          f"{in_top} of them in jieba's top {DEFAULT_COMMON_RANK:,}); captions: {len(clean)} clean, "
          f"{len(inserted)} with one inserted term; e.g. {clean[0]} | {clean[1]} | {inserted[0][0]}")
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "lexicon.txt")
        Path(path).write_text("\n".join(lex) + "\n", encoding="utf-8")
        for name, words in (("count-weighted", lex), ("half mid-frequency", lex_mid)):
            Path(path).write_text("\n".join(words) + "\n", encoding="utf-8")
            print(f"\neveryday words {name}: {len(words)} entries")
            evaluate(path, clean, inserted, "no hygiene", None, None)
            evaluate(path, clean, inserted, f"everyday words (rank {DEFAULT_COMMON_RANK:,})",
                     DEFAULT_COMMON_RANK, None)
            evaluate(path, clean, inserted, f"run share (> {DEFAULT_MAX_SHARE:.0%})", None, DEFAULT_MAX_SHARE)
            evaluate(path, clean, inserted, "defaults (both)", DEFAULT_COMMON_RANK, DEFAULT_MAX_SHARE)
        big = build_lexicon(rows, args.common, random.Random(args.seed),
                            phrases=args.big - len(lex))
        Path(path).write_text("\n".join(big) + "\n", encoding="utf-8")
        caps = make_captions(rows, 20000, random.Random(args.seed + 2))
        print(f"\n50k lexicon (count-weighted everyday words + generated phrases): {len(big)} entries")
        evaluate(path, clean, inserted, "defaults (both)", DEFAULT_COMMON_RANK, DEFAULT_MAX_SHARE)
        speed(path, caps)


if __name__ == "__main__":
    main()
