"""PII rules measured on text built independently of them.

    python bench/text_real.py [--per-region 600] [--lookalikes 400] [--seed 0]

Nothing here comes from filters/: phone numbers are libphonenumber's own example numbers per
region and type with their last digits varied (kept only when the metadata calls the variant
valid and of the same type), written in the forms people use (spaces, dashes, parentheses,
`+`/`00`, a bare country code, extensions with 转/分机/#/ext/x); ISBN, EAN-13 and UPC-A codes
carry check digits computed by python-stdnum; IDs, cards, IPs, emails and URLs are made here.
Each goes into Chinese (simplified and traditional) or English caption templates written below.

Look-alikes (ISBN-10/13, EAN-13, UPC-A, versions, dates, prices, SKUs, model numbers) are
reported twice: labelled the way product pages label them ("ISBN 978-...", "SKU: ..."), and
held-out bare in a sentence with no label, which the rules' keyword lists cannot help with.

Prints recall per region (with the worst written form), precision and recall per PII type, the
share of look-alikes redacted (goal <= 1%), and captions/s of the PII rules on these captions.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import phonenumbers as pn
from phonenumbers import PhoneNumberFormat as F
from phonenumbers import PhoneNumberType as T
from stdnum import ean, isbn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.pii import PiiRedactor  # noqa: E402

REGIONS = ("CN", "HK", "MO", "TW", "US")
# Reached only with a country code (+ or 00) under the default regions.
INTL = ("GB", "JP", "SG", "AU", "DE", "KR", "FR", "MY", "TH", "CA")

ZH_PHONE = ["门店地址：人民路88号，订座电话：{}，营业时间10:00-22:00", "新店开业！欢迎来电{}咨询",
            "本店热线 {}（周一至周日）", "王小姐 {} 微信同号", "海鲜酒家 {} 欢迎预约",
            "需要的朋友请联系{}，非诚勿扰", "装修设计找我们，{}，免费上门量房", "{} 24小时服务",
            "房东直租，两室一厅，看房打{}", "招聘服务员若干名，有意者请致电 {}。"]
ZH_HANT_PHONE = ["聯絡我們：{}", "訂位專線 {} 歡迎光臨", "茶餐廳外賣電話{}，滿100元免運",
                 "有意請WhatsApp {} 查詢", "陳先生 {}（可留言）", "門市地址：彌敦道123號 {}",
                 "手機：{} 歡迎來電洽詢", "{} 旺舖招租"]
EN_PHONE = ["Call us at {} for reservations", "Contact: {} | Open daily 9am-6pm",
            "Seafood restaurant in Wan Chai, tel {}", "For enquiries please WhatsApp {}",
            "Book now on {} - limited seats", "Our shop front at night. Phone: {}",
            "Plumber available 24/7 {} free quotes", "Questions? Give us a ring at {}.",
            "Apartment for rent, 2 bedrooms, {} (agent)", "Jenny {} - wedding photographer"]
# Which templates name the number as a phone (for the split figure; the rules never see this).
PHONE_WORDS = ("电话", "電話", "热线", "來電", "来电", "联系", "聯絡", "專線", "whatsapp", "微信", "手機",
               "call", "tel", "phone", "ring", "contact", "致电", "小姐", "先生")
EXTENSIONS = [" 转{}", "转{}", " 分机{}", "#{}", " ext. {}", " x{}", " 轉 {}"]


def _vary(rng: random.Random, n: pn.PhoneNumber, typ: int) -> pn.PhoneNumber | None:
    """The example number with 2-6 of its last digits replaced; None unless the metadata still
    calls it valid and of the same type."""
    nsn = str(n.national_number)
    k = rng.randint(2, min(6, len(nsn) - 2))
    cand = nsn[:-k] + "".join(rng.choice("0123456789") for _ in range(k))
    m = pn.PhoneNumber(country_code=n.country_code, national_number=int(cand))
    if pn.is_valid_number(m) and pn.number_type(m) == typ:
        return m
    return None


def numbers(rng: random.Random, region: str, per_type: int) -> list[tuple[str, pn.PhoneNumber]]:
    out = []
    for typ in (T.MOBILE, T.FIXED_LINE):
        ex = pn.example_number_for_type(region, typ)
        if ex is None:
            continue
        got, tries = 0, 0
        typ = pn.number_type(ex)  # the US example is FIXED_LINE_OR_MOBILE
        while got < per_type and tries < per_type * 50:
            tries += 1
            m = _vary(rng, ex, typ)
            if m is not None:
                out.append((("mobile" if typ == T.MOBILE else "fixed"), m))
                got += 1
    return out


def written_forms(n: pn.PhoneNumber, national_ok: bool) -> list[tuple[str, str]]:
    """(form name, text) as people write the number."""
    cc = str(n.country_code)
    nsn = pn.national_significant_number(n)
    intl = pn.format_number(n, F.INTERNATIONAL)
    groups = intl.split(" ")[1:]
    forms = [("+cc spaced", intl), ("+cc compact", "+" + cc + nsn), ("00cc", "00" + cc + " " + " ".join(groups)),
             ("+cc-dashes", "+" + cc + "-" + "-".join(groups))]
    if not national_ok:
        return forms
    forms += [("(cc) nsn", f"({cc}) {nsn}"), ("cc spaced", cc + " " + " ".join(groups))]
    nat = pn.format_number(n, F.NATIONAL)
    parts = nat.replace("(", "").replace(")", "").replace("-", " ").split()
    forms += [("national", nat), ("national dashes", "-".join(parts)), ("national compact", "".join(parts))]
    if len(parts) >= 2:
        forms.append(("(area)local", f"({parts[0]}){''.join(parts[1:])}"))
        forms.append(("(area) local-dash", f"({parts[0]}) {'-'.join(parts[1:])}"))
    return forms


def _template(rng: random.Random, region: str) -> tuple[str, str]:
    if region in ("HK", "MO", "TW") and rng.random() < 0.5:
        return "zh", rng.choice(ZH_HANT_PHONE)
    if region in ("CN", "HK", "MO", "TW") and rng.random() < 0.6:
        return "zh", rng.choice(ZH_PHONE)
    return "en", rng.choice(EN_PHONE)


def phone_cases(rng: random.Random, per_region: int) -> list[tuple[str, str, str, str, str]]:
    """(region, form, lang, caption, inserted text)."""
    cases = []
    for region in (*REGIONS, "INTL"):
        regions = INTL if region == "INTL" else (region,)
        pool = []
        for r in regions:
            pool += [(r, n) for _, n in numbers(rng, r, max(4, per_region // (4 * len(regions))))]
        for i in range(per_region):
            r, n = rng.choice(pool)
            form, text = rng.choice(written_forms(n, region != "INTL"))
            if rng.random() < 0.15:
                form += " +ext"
                text += rng.choice(EXTENSIONS).format(rng.randint(1, 9999))
            lang, tpl = _template(rng, r if region != "INTL" else "US")
            cases.append((region, form, lang, tpl.format(text), text))
    return cases


# --- other PII types, made here ------------------------------------------------------------

_ID_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def resident_id(rng: random.Random) -> str:
    body = (rng.choice(["110108", "310115", "440305", "510104", "330102", "420111"])
            + f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            + f"{rng.randint(0, 999):03d}")
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _ID_W)) % 11]


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


def card(rng: random.Random) -> str:
    length = rng.choice([16, 16, 19])
    body = rng.choice(["6222", "6228", "4563", "5187", "6217"]) + "".join(
        rng.choice("0123456789") for _ in range(length - 5))
    num = body + _luhn_digit(body)
    return " ".join(num[i:i + 4] for i in range(0, len(num), 4)) if rng.random() < 0.5 else num


def other_cases(rng: random.Random, n: int) -> list[tuple[str, str, str, str]]:
    """(type, lang, caption, inserted text)."""
    makers = {
        "id": (resident_id, ["身份证号码：{}，请核对", "实名登记 {} 已通过"], ["ID number {} on file"]),
        "card": (card, ["收款卡号 {} 工商银行", "转账请打到{}"], ["Pay to card {} thanks"]),
        "ip": (lambda r: f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
               ["来自IP {} 的访问", "服务器地址：{}"], ["posted from {} yesterday", "server at {} is down"]),
        "email": (lambda r: f"{r.choice(['lily', 'wang.lei', 'shop88', 'tom_c'])}{r.randint(1, 999)}@"
                            f"{r.choice(['qq.com', '163.com', 'gmail.com', 'hotmail.com.hk'])}",
                  ["投稿邮箱：{}", "简历发送至{}"], ["email me at {} for prints"]),
        "url": (lambda r: f"https://{r.choice(['shop', 'm', 'www'])}.example{r.randint(1, 99)}.com/p/{r.randint(1, 99999)}",
                ["原文链接：{}", "购买地址 {}"], ["full recipe at {}"]),
    }
    out = []
    for i in range(n):
        typ = list(makers)[i % len(makers)]
        make, zh, en = makers[typ]
        text = make(rng)
        lang = "zh" if rng.random() < 0.5 else "en"
        out.append((typ, lang, rng.choice(zh if lang == "zh" else en).format(text), text))
    return out


# --- look-alikes -------------------------------------------------------------------------------

def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _isbn13(rng: random.Random) -> str:
    body = rng.choice(["9787", "9780", "9781", "9784", "978957", "978962", "979"])
    body += _digits(rng, 12 - len(body))
    return body + ean.calc_check_digit(body)


def lookalike_values(rng: random.Random) -> dict[str, tuple[list[str], list[str]]]:
    """kind -> (labelled forms, bare forms)."""
    i13 = _isbn13(rng)
    i13_978 = "978" + i13[3:12]
    i13_978 += ean.calc_check_digit(i13_978)
    i10 = isbn.to_isbn10(i13_978)
    e13 = rng.choice(["690", "691", "692", "693", "694", "695", "400", "450", "471", "489"]) + _digits(rng, 9)
    e13 += ean.calc_check_digit(e13)
    upc = rng.choice(["0", "0", "1", "6", "7", "8"]) + _digits(rng, 10)
    upc += ean.calc_check_digit(upc)
    y, mo, d = rng.randint(1990, 2025), rng.randint(1, 12), rng.randint(1, 28)
    ver = ".".join(str(rng.randint(0, 20)) for _ in range(rng.choice([3, 4])))
    ver4 = f"{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 9999)}"
    price = rng.randint(10, 99999)
    sku = _digits(rng, rng.choice([7, 8, 10, 12]))
    model = rng.choice([f"SM-G{rng.randint(9000, 9999)}", f"RTX{rng.choice([3060, 4070, 4090])}",
                        f"{rng.randint(21, 22)}HM{_digits(rng, 4)}CD", f"WH-1000XM{rng.randint(3, 5)}",
                        f"KD-{rng.choice([55, 65, 75])}X{rng.randint(80, 95)}J",
                        f"{_digits(rng, 4)}-{_digits(rng, 4)}"])
    return {
        "ISBN-10": ([f"ISBN {isbn.format(i10)}", f"ISBN: {i10}", f"ISBN-10 {i10}"], [i10, isbn.format(i10)]),
        "ISBN-13": ([f"ISBN {isbn.format(i13)}", f"ISBN-13: {i13}", f"书号 {i13}"], [i13, isbn.format(i13)]),
        "EAN-13": ([f"EAN: {e13}", f"条形码 {e13}", f"EAN-13 {e13}"], [e13]),
        "UPC-A": ([f"UPC {upc}", f"UPC-A: {upc}"], [upc, f"{upc[0]} {upc[1:6]} {upc[6:11]} {upc[11]}"]),
        "version": ([f"APK {ver4}", f"Series v{ver}", f"build {ver4}", f"Version {ver}", f"固件版本 V{ver4}"],
                    [f"v{ver4}", f"{ver4} release notes"]),
        "date": ([f"拍摄于{y}年{mo}月{d}日", f"Posted {mo}/{d}/{y}", f"日期：{y}-{mo:02d}-{d:02d}"],
                 [f"{y}-{mo:02d}-{d:02d}", f"{y}.{mo:02d}.{d:02d}", f"{d:02d}/{mo:02d}/{y}", f"{y}{mo:02d}{d:02d}"]),
        "price": ([f"¥{price}", f"售价 {price} 元", f"HK${price:,}", f"NT${price:,}", f"$ {price}.99"],
                  [f"{price:,} yuan", f"{price}元"]),
        "SKU": ([f"SKU: {sku}", f"货号 {sku}", f"Item #{sku}", f"Art.-Nr. {sku[:4]}-{sku[4:]}"],
                [f"{sku[:4]}-{sku[4:]}"]),
        "model": ([f"Model {model}", f"型号 {model}", f"Part No. {model}"], [model]),
    }


ZH_PRODUCT = ["正版图书 {} 全新塑封", "商品详情：{}，现货速发", "{} 如图所示", "宝贝参数 {} 包邮"]
EN_PRODUCT = ["Book cover, {} paperback", "Product details: {} in stock", "{} as shown",
              "New listing {} free shipping"]


def lookalike_cases(rng: random.Random, n: int) -> list[tuple[str, str, str, str]]:
    """(kind, labelled|bare, lang, caption)."""
    out = []
    for i in range(n):
        vals = lookalike_values(rng)
        for kind, (labelled, bare) in vals.items():
            for how, pool in (("labelled", labelled), ("bare", bare)):
                lang = "zh" if rng.random() < 0.5 else "en"
                tpl = rng.choice(ZH_PRODUCT if lang == "zh" else EN_PRODUCT)
                out.append((kind, how, lang, tpl.format(rng.choice(pool))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-region", type=int, default=600)
    ap.add_argument("--lookalikes", type=int, default=400, help="rounds; each makes one of every kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bare-phones", action="store_true",
                    help="annotate.phone_bare_numbers: true (bare HK/MO/US numbers without a phone word)")
    ap.add_argument("--forms", action="store_true", help="print recall per region and written form")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    red = PiiRedactor(bare_phones=args.bare_phones)
    found_by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [true, all] redactions

    rec_region: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rec_word: dict[tuple[str, bool], list[int]] = defaultdict(lambda: [0, 0])
    rec_form: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    # The one case the default rule leaves by design: a number with no country code, trunk 0,
    # parentheses or spaced groups, and no phone word nearby (reads like a SKU).
    rec_marked: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: dict[str, list[str]] = defaultdict(list)
    phones = phone_cases(rng, args.per_region)
    for region, form, lang, cap, text in phones:
        out, _ = red.redact(cap, lang)
        hits = red.find(cap)
        ok = any(t == "phone" and s == text for t, s in hits)
        for t, s in hits:
            found_by_type[t][1] += 1
            found_by_type[t][0] += int(t == "phone" and s == text)
        rec_region[region][0] += ok
        rec_region[region][1] += 1
        worded = any(w in cap.lower() for w in PHONE_WORDS)
        rec_word[(region, worded)][0] += ok
        rec_word[(region, worded)][1] += 1
        rec_form[(region, form)][0] += ok
        rec_form[(region, form)][1] += 1
        bare = form.split(" +ext")[0] in ("national dashes", "national compact") \
            and not text.startswith("0") and not worded
        if not bare:
            rec_marked[region][0] += ok
            rec_marked[region][1] += 1
        if not ok and len(misses[region]) < 3:
            misses[region].append(f"{cap!r} -> {out!r}")
    print(f"phones: {len(phones)} captions, libphonenumber {pn.__version__} example numbers varied, "
          f"regions expected {red.phones.regions}")
    for region, (k, m) in rec_region.items():
        forms = [(rec_form[(region, f)][0] / rec_form[(region, f)][1], f) for (r, f) in rec_form if r == region]
        worst = min(forms)
        w = [f"{'with' if flag else 'without'} a phone word {a / b:.4f} ({a}/{b})"
             for flag in (True, False) for a, b in [rec_word[(region, flag)]] if b]
        print(f"  {region:<5} recall {k / m:.4f} ({k}/{m}); {'; '.join(w)}; worst form: {worst[1]} {worst[0]:.3f}")
        a, b = rec_marked[region]
        print(f"        written with a country code, trunk 0, parentheses, spaced groups or a phone "
              f"word: {a / b:.4f} ({a}/{b})")
        if args.forms:
            print("        " + ", ".join(f"{f} {v:.3f}" for v, f in sorted(forms, key=lambda x: x[1])))
        for line in misses[region]:
            print(f"        missed: {line}")

    rec_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rec_type["phone"] = [sum(v[0] for v in rec_region.values()), sum(v[1] for v in rec_region.values())]
    for typ, lang, cap, text in other_cases(rng, 1000):
        hits = red.find(cap)
        rec_type[typ][0] += any(t == typ and s == text for t, s in hits)
        rec_type[typ][1] += 1
        for t, s in hits:
            found_by_type[t][1] += 1
            found_by_type[t][0] += int(t == typ and s == text)

    looks = lookalike_cases(rng, args.lookalikes)
    lk: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    lk_examples: list[str] = []
    for kind, how, lang, cap in looks:
        hits = red.find(cap)
        lk[(kind, how)][0] += bool(hits)
        lk[(kind, how)][1] += 1
        for t, _ in hits:
            found_by_type[t][1] += 1
        if hits and len(lk_examples) < 8:
            lk_examples.append(f"{cap!r} -> {hits}")
    print("per PII type (precision over every redaction made in this bench, recall on inserted items):")
    for typ in ("phone", "email", "id", "card", "ip", "url"):
        tp, allf = found_by_type[typ]
        k, m = rec_type[typ]
        print(f"  {typ:<6} precision {tp / allf if allf else float('nan'):.4f} ({tp}/{allf})  "
              f"recall {k / m if m else float('nan'):.4f} ({k}/{m})")
    tot = [0, 0]
    for how in ("labelled", "bare"):
        row = []
        sub = [0, 0]
        for (kind, h), (k, m) in sorted(lk.items()):
            if h == how:
                row.append(f"{kind} {k}/{m}")
                sub[0] += k
                sub[1] += m
        tot[0] += sub[0]
        tot[1] += sub[1]
        print(f"look-alikes {how} (redacted/total): {sub[0] / sub[1]:.4f}  " + ", ".join(row))
    print(f"look-alikes redacted overall: {tot[0] / tot[1]:.4f} ({tot[0]}/{tot[1]}) (goal <= 0.01)")
    for e in lk_examples:
        print(f"    e.g. {e}")

    caps = [c for _, _, _, c, _ in phones] + [c for _, _, _, c in looks]
    t = time.perf_counter()
    for c in caps:
        red.redact(c, "zh")
    dt = time.perf_counter() - t
    print(f"speed: {len(caps) / dt:.0f} captions/s/core on these captions (every one has >= 7 digits)")


if __name__ == "__main__":
    main()
