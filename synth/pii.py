"""Made-up personal data of the kinds found in Chinese and English web alt-text.

Every generator returns the exact text it produced, so the corpus can record the substring
inserted into a caption. ID numbers carry valid GB 11643 checksums and card numbers pass Luhn,
so a detector that validates checksums is tested as it will run on real data.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

PII_TYPES = ("phone", "email", "id", "card", "name", "ip", "url")

_MOBILE_PREFIXES = [
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "145", "147", "150",
    "151", "152", "153", "155", "156", "157", "158", "159", "166", "170", "173", "175", "176",
    "177", "178", "180", "181", "182", "183", "184", "185", "186", "187", "188", "189", "198",
    "199",
]
# Area codes with their local number length.
_LANDLINE_AREAS = [("010", 8), ("021", 8), ("020", 8), ("022", 8), ("023", 8), ("0755", 8),
                   ("0571", 8), ("0512", 8), ("028", 8), ("027", 8), ("0731", 7), ("0851", 7)]
# Region codes of real administrative divisions (the first 6 digits of an ID number).
_ID_REGIONS = ["110101", "110105", "310104", "310115", "440106", "440305", "330106", "320102",
               "510107", "420106", "610113", "370202", "350203", "210102", "500103", "120101"]
_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
_ID_CHECK = "10X98765432"
_CARD_BINS = ["622202", "622848", "621700", "622588", "436742", "518710", "625965", "622262",
              "621226", "403361", "356827", "601382"]

_SURNAMES = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱",
             "胡", "郭", "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "韩", "冯", "欧阳",
             "司马", "诸葛"]
_GIVEN_CHARS = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰志华建国玉梅晓红文博宇浩然子涵欣怡")
_EN_FIRST = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
             "David", "Emily", "Daniel", "Sarah", "Thomas", "Jessica", "Kevin", "Laura",
             "Brian", "Olivia", "George", "Emma"]
# No colour words (Brown, White): a name must not read as a scene attribute.
_EN_LAST = ["Smith", "Johnson", "Williams", "Young", "Jones", "Miller", "Davis", "Wilson",
            "Anderson", "Taylor", "Thomas", "Moore", "Martin", "Jackson", "Thompson", "Lee",
            "Harris", "Clark", "Lewis", "Walker"]
_EMAIL_DOMAINS = ["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "sina.com",
                  "foxmail.com", "yahoo.com", "example.cn", "mail.example.org"]
_URL_HOSTS = ["www.shop-example.cn", "t.example.cn", "m.weibo-example.com", "www.example.com",
              "blog.example.org", "img.example.net", "bbs.example.com.cn", "tinyurl-example.com"]
_PINYIN = ["wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu",
           "sun", "ma", "zhu", "hu", "lin", "wei", "fang", "na", "min", "jing", "lei"]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def mobile(rng: np.random.Generator) -> str:
    """A Chinese mobile number in one of the forms people write."""
    p = _MOBILE_PREFIXES[int(rng.integers(0, len(_MOBILE_PREFIXES)))]
    a, b = _digits(rng, 4), _digits(rng, 4)
    forms = [f"{p}{a}{b}", f"{p}-{a}-{b}", f"{p} {a} {b}", f"+86 {p} {a} {b}",
             f"+86{p}{a}{b}", f"+86-{p}{a}{b}"]
    weights = np.array([0.35, 0.2, 0.15, 0.15, 0.1, 0.05])
    return forms[int(rng.choice(len(forms), p=weights))]


def landline(rng: np.random.Generator) -> str:
    area, n = _LANDLINE_AREAS[int(rng.integers(0, len(_LANDLINE_AREAS)))]
    local = str(int(rng.integers(2, 10))) + _digits(rng, n - 1)
    return f"{area}-{local}" if rng.random() < 0.6 else f"({area}){local}"


def id_checksum(first17: str) -> str:
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def is_valid_id(number: str) -> bool:
    """GB 11643 check: 17 digits, a valid birth date, and the check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return id_checksum(number[:17]) == number[17].upper()


def id_number(rng: np.random.Generator, want_x: bool | None = None) -> str:
    """An 18-digit resident ID number with a valid birth date and checksum. `want_x` forces
    (True) or forbids (False) an X check character; None takes whatever the digits give."""
    while True:
        region = _ID_REGIONS[int(rng.integers(0, len(_ID_REGIONS)))]
        birth = dt.date(1950, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 55)))
        first17 = f"{region}{birth:%Y%m%d}{_digits(rng, 3)}"
        check = id_checksum(first17)
        if want_x is None or want_x == (check == "X"):
            return first17 + check


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2 or any(not (c.isdigit() or c == " ") for c in number):
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_number(rng: np.random.Generator) -> str:
    """A 16-19 digit bank card number passing Luhn, sometimes grouped by four with spaces."""
    length = int(rng.choice([16, 16, 16, 17, 18, 19, 19]))
    body = _CARD_BINS[int(rng.integers(0, len(_CARD_BINS)))] + _digits(rng, length - 7)
    for check in "0123456789":
        if luhn_valid(body + check):
            number = body + check
            break
    if rng.random() < 0.4:
        number = " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def email(rng: np.random.Generator) -> str:
    user = _PINYIN[int(rng.integers(0, len(_PINYIN)))]
    if rng.random() < 0.5:
        user += "." + _PINYIN[int(rng.integers(0, len(_PINYIN)))]
    user += _digits(rng, int(rng.integers(0, 5)))
    if rng.random() < 0.3:
        user = _digits(rng, int(rng.integers(6, 11))).lstrip("0") or "10001"
    return f"{user}@{_EMAIL_DOMAINS[int(rng.integers(0, len(_EMAIL_DOMAINS)))]}"


def zh_name(rng: np.random.Generator) -> str:
    surname = _SURNAMES[int(rng.integers(0, len(_SURNAMES)))]
    n = 1 if rng.random() < 0.4 else 2
    return surname + "".join(_GIVEN_CHARS[int(i)] for i in rng.integers(0, len(_GIVEN_CHARS), n))


def en_name(rng: np.random.Generator) -> str:
    return (f"{_EN_FIRST[int(rng.integers(0, len(_EN_FIRST)))]} "
            f"{_EN_LAST[int(rng.integers(0, len(_EN_LAST)))]}")


def ipv4(rng: np.random.Generator) -> str:
    first = int(rng.choice([10, 36, 58, 61, 101, 114, 119, 172, 183, 192, 202, 221]))
    rest = rng.integers(0, 256, size=3)
    if first == 192:
        rest[0] = 168
    return ".".join(str(int(x)) for x in [first, *rest[:2], max(1, int(rest[2]))])


def url(rng: np.random.Generator) -> str:
    host = _URL_HOSTS[int(rng.integers(0, len(_URL_HOSTS)))]
    path = f"{['item', 'p', 's', 'u'][int(rng.integers(0, 4))]}/{_digits(rng, 6)}"
    scheme = ["https://", "http://", ""][int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
    if not scheme and not host.startswith("www."):
        scheme = "https://"
    return f"{scheme}{host}/{path}"


# How each PII item is worked into a caption: (type, generator, zh contexts, en contexts).
# "{}" marks where the PII text goes.
_PHONE_ZH = ["联系电话{}", "电话：{}", "手机{}", "微信同号{}", "咨询热线 {}"]
_PHONE_EN = ["call {}", "tel: {}", "contact {}", "WhatsApp {}"]


def make_pii(rng: np.random.Generator, lang: str) -> tuple[str, str, str]:
    """One PII item for a caption in `lang`: (type, exact PII text, phrase containing it)."""
    kind = str(rng.choice(["phone", "phone", "email", "id", "card", "name", "ip", "url"]))
    if kind == "phone":
        text = landline(rng) if rng.random() < 0.3 else mobile(rng)
        contexts = _PHONE_ZH if lang == "zh" else _PHONE_EN
    elif kind == "email":
        text = email(rng)
        contexts = ["邮箱：{}", "投稿邮箱 {}", "联系邮箱{}"] if lang == "zh" else \
            ["email: {}", "contact {}", "mail me at {}"]
    elif kind == "id":
        text = id_number(rng, want_x=True if rng.random() < 0.2 else None)
        contexts = ["身份证号{}", "身份证：{}", "证件号码 {}"] if lang == "zh" else \
            ["ID {}", "ID no. {}"]
    elif kind == "card":
        text = card_number(rng)
        contexts = ["银行卡号：{}", "转账卡号{}", "收款账号 {}"] if lang == "zh" else \
            ["card {}", "pay to card {}"]
    elif kind == "name":
        text = zh_name(rng) if lang == "zh" else en_name(rng)
        contexts = ["摄影：{}", "作者 {}", "联系人{}", "{}拍摄"] if lang == "zh" else \
            ["photo by {}", "by {}", "contact {}", "{}'s photo"]
    elif kind == "ip":
        text = ipv4(rng)
        contexts = ["来源IP：{}", "上传者IP {}"] if lang == "zh" else ["uploaded from {}", "IP {}"]
    else:
        text = url(rng)
        contexts = ["详情见 {}", "原图：{} ", "更多请访问{}"] if lang == "zh" else \
            ["more at {}", "source: {}", "see {}"]
    phrase = contexts[int(rng.integers(0, len(contexts)))].format(text).strip()
    return kind, text, phrase
