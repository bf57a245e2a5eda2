import pytest

from filters.pii import PiiRedactor, luhn_ok, valid_resident_id

R = PiiRedactor()
VALID_ID = "11010519491231002X"
VALID_ID2 = "440308199901011233"


def _zh(text):
    return R.redact(text, "zh")


def test_id_checksum():
    assert valid_resident_id(VALID_ID) and valid_resident_id(VALID_ID.lower())
    assert valid_resident_id(VALID_ID2) == (
        "10X98765432"[sum(int(c) * w for c, w in zip(VALID_ID2[:17], (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2))) % 11] == "3")
    assert not valid_resident_id("110105194912310021")


def test_id_redacted_only_with_valid_checksum():
    assert _zh(f"身份证号{VALID_ID}已登记") == ("身份证号<身份证号>已登记", {"id": 1})
    out, counts = _zh("身份证号110105194912310021已登记")
    assert "<身份证号>" not in out and "id" not in counts


@pytest.mark.parametrize("phone", [
    "13800138000", "138 0013 8000", "138-0013-8000", "+86 13800138000", "+86-138-0013-8000",
    "(+86)13800138000", "0086 138 0013 8000", "（+86）138 0013 8000",
])
def test_mobile_forms(phone):
    out, counts = _zh(f"联系电话：{phone}，欢迎来电")
    assert out == "联系电话:<手机号>,欢迎来电".replace(":", "：").replace(",", "，") and counts == {"phone": 1}


@pytest.mark.parametrize("phone", ["010-88888888", "(010) 8888 8888", "0755-12345678", "021 6234 5678", "0851-8234567"])
def test_landline_forms(phone):
    out, counts = _zh(f"门店电话 {phone} 营业中")
    assert out == "门店电话 <电话> 营业中" and counts == {"phone": 1}


@pytest.mark.parametrize("text", [
    "订单号2023138001380001234", "条码 6901380013800012", "编号913800138000",
    "序列号123-13800138000-456", "13800138000123",
])
def test_phone_inside_longer_digit_runs_not_redacted(text):
    out, counts = _zh(text)
    assert "phone" not in counts and "<手机号>" not in out


def test_email_and_url_and_ip():
    out, counts = R.redact("mail me at john.doe+x@example.co.uk or see https://example.com/a?b=1. server 192.168.1.20.")
    assert out == "mail me at <EMAIL> or see <URL>. server <IP>."
    assert counts == {"email": 1, "url": 1, "ip": 1}
    out, counts = _zh("网址www.example.cn/path，邮箱13800138000@163.com")
    assert out == "网址<网址>,邮箱<邮箱>".replace(",", "，") and counts == {"url": 1, "email": 1}


def test_invalid_ip_not_redacted():
    assert R.redact("version 1.2.3.4.5 and 256.1.1.1")[1] == {}


def test_bank_card_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    out, counts = _zh("卡号6222 0212 3456 7890 128")
    # Only redact when Luhn passes.
    assert (counts.get("card") == 1) == luhn_ok("6222021234567890128")
    out, counts = R.redact("card 4111 1111 1111 1111 exp 12/25")
    assert out == "card <CARD> exp 12/25" and counts == {"card": 1}
    out, counts = R.redact("card 4111 1111 1111 1112 exp")
    assert "card" not in counts


def test_us_phone():
    # 555 is not an area code: "(555) 123-4567" is a film number, not a reachable phone.
    out, counts = R.redact("Call (201) 555-0123 or +1 201.555.0123 today, not (555) 123-4567")
    assert out == "Call <PHONE> or <PHONE> today, not (555) 123-4567" and counts == {"phone": 2}


def test_fullwidth_digits_need_normalising_first():
    from filters.text import clean_caption

    r = clean_caption("电话：１３８００１３８０００")
    assert "<手机号>" in r["caption"] and r["pii_phone"] == 1


def test_no_false_positives_on_plain_captions():
    for t in ["2024年5月12日 北京 晴", "iPhone 15 Pro Max 256GB", "a cat on a mat", "价格 1999 元",
              "第12345678期", "尺寸 120x80cm", "😀 123"]:
        assert R.redact(t, "zh")[1] == {}, t


def test_mixed_many():
    text = f"张三 13800138000 zs@qq.com {VALID_ID} 10.0.0.1 http://t.cn/abc"
    out, counts = _zh(text)
    assert counts == {"phone": 1, "email": 1, "id": 1, "ip": 1, "url": 1}
    assert out == "张三 <手机号> <邮箱> <身份证号> <IP地址> <网址>"


def test_batch_and_unknown_type():
    cols = R.redact_batch(["13800138000 ok", "nothing here"], ["zh", "en"])
    assert cols["text"] == ["<手机号> ok", "nothing here"] and cols["pii_phone"] == [1, 0]
    with pytest.raises(ValueError, match="unknown PII"):
        PiiRedactor(types=["ssn"])


def test_prefixed_mobile_is_not_a_card():
    # 8615316559241 passes Luhn; it is still a phone number.
    assert luhn_ok("8615316559241")
    assert R.redact("tel: +8615316559241", "en") == ("tel: <PHONE>", {"phone": 1})
    assert _zh("微信同号008615316559241")[1] == {"phone": 1}


# --- issue 13: regional phones, look-alikes, placeholder language, action switch ---------------

import phonenumbers  # noqa: E402
from stdnum import ean, isbn  # noqa: E402

from filters.pii import PLACEHOLDERS  # noqa: E402

ZH_PHONE = {"<手机号>", "<电话>"}

# The forms the issue found missed, as written there.
ISSUE_PHONES = ["+852 6123 4567", "(852) 61234567", "0912-345-678", "+886 2 2752 1874",
                "(02)2781-3888#51", "+853 6612 3456", "010-62345678", "(0755)86013388",
                "0571-87654321转8001", "+86 10 6234 5678"]
MORE_PHONES = ["6123 4567", "2821 2345", "0912345678", "+886 912 345 678", "0086 10 6234 5678",
               "+44 20 7946 0958", "0044 20 7946 0958", "+81 3-1234-5678", "+1 (201) 555-0123 ext. 45",
               "(201) 555-0123 x12", "0755-8601 3388 分机 203", "(02) 2781 3888 轉 51",
               "+852-2123-4567", "852 6123 4567", "+853 2821 2345 #8"]


@pytest.mark.parametrize("phone", ISSUE_PHONES + MORE_PHONES)
def test_regional_phone_forms_whole_span_redacted(phone):
    out, counts = _zh(f"订座电话：{phone}，欢迎光临")
    assert counts == {"phone": 1}, out
    assert out in {f"订座电话：{p}，欢迎光临" for p in ZH_PHONE}
    out, counts = R.redact(f"Book a table: call {phone} today")
    assert (out, counts) == ("Book a table: call <PHONE> today", {"phone": 1})


def _forms(n: phonenumbers.PhoneNumber) -> list[str]:
    F = phonenumbers.PhoneNumberFormat
    e164 = phonenumbers.format_number(n, F.E164)
    return [phonenumbers.format_number(n, F.INTERNATIONAL), phonenumbers.format_number(n, F.NATIONAL),
            e164, "00" + e164[1:]]


@pytest.mark.parametrize("region", ["CN", "HK", "MO", "TW", "US"])
@pytest.mark.parametrize("kind", ["MOBILE", "FIXED_LINE"])
def test_metadata_example_numbers_every_form(region, kind):
    """libphonenumber's own example number of each region, in each written form."""
    n = phonenumbers.example_number_for_type(region, getattr(phonenumbers.PhoneNumberType, kind))
    for form in _forms(n):
        out, counts = _zh(f"联系方式 {form} 周一至周五")
        assert counts == {"phone": 1} and out.replace("<手机号>", "<电话>") == "联系方式 <电话> 周一至周五", form


def test_mobile_and_landline_placeholders_by_number_type():
    assert _zh("手機 6123 4567")[0] == "手機 <手机号>"
    assert _zh("電話 (02)2781-3888")[0] == "電話 <电话>"


def test_regions_are_a_setting():
    cn_only = PiiRedactor(regions=["CN"])
    assert cn_only.redact("电话 6123 4567", "zh")[1] == {}
    assert cn_only.redact("电话 +852 6123 4567", "zh")[1] == {"phone": 1}  # a country code needs no region
    with pytest.raises(ValueError, match="unknown phone regions"):
        PiiRedactor(regions=["XX"])


def _isbn13(body9: str, prefix: str = "978") -> str:
    return prefix + body9 + ean.calc_check_digit(prefix + body9)


def _luhn_isbn13() -> str:
    """An ISBN-13 that also passes Luhn (one in ten do)."""
    for i in range(1000):
        code = _isbn13(f"{i * 7919 % 10 ** 9:09d}")
        if luhn_ok(code):
            return code
    raise AssertionError("no Luhn-valid ISBN-13 in 1000 tries")


def _lookalikes() -> list[str]:
    i13 = _luhn_isbn13()
    i10 = isbn.to_isbn10(_isbn13("022584197"))  # starts with 0: an area code to the old rules
    upc = "04689671454" + ean.calc_check_digit("04689671454")
    return [
        f"ISBN {isbn.format(i10)}", f"ISBN: {i10}", i10, f"ISBN {isbn.format(i13)}", i13,
        f"UPC {upc}", upc, "EAN 6901234567892", "6901234567892", "条码 6901234567892",
        "APK 3.7.5.8", "Series v1.0.1.0", "build 10.0.19041.1", "version 2.0.0.1", "固件版本 1.2.3.4",
        "2024-05-12", "2024.05.12", "12/05/2024", "拍摄于20240512", "$1,299.99", "售价 21234567 元",
        "HK$ 61234567", "SKU: 61234567", "Item #52345678", "货号 21234567", "型号 6123-4567",
        "Model 2015550123", "Part No. 5123 4567", "Order no: 0912345678", "Art.-Nr. 5123 4567",
    ]


@pytest.mark.parametrize("text", _lookalikes())
def test_lookalikes_never_redacted(text):
    for lang in ("zh", "en"):
        out, counts = R.redact(f"see {text} here", lang)
        assert (out, counts) == (f"see {text} here", {}), lang


def test_ip_needs_non_version_context():
    assert R.redact("server 192.168.1.20 down")[1] == {"ip": 1}
    assert R.redact("IP: 10.0.0.1")[1] == {"ip": 1}
    for t in ["APK 3.7.5.8", "Series v1.0.1.0", "ver 1.2.3.4", "app-3.7.5.8.apk", "版本 4.3.2.1"]:
        assert R.redact(t)[1] == {}, t


def test_cards_still_luhn_and_ids_still_checksum():
    assert R.redact("card 4111 1111 1111 1111") == ("card <CARD>", {"card": 1})
    assert R.redact("card 4222222222222") == ("card <CARD>", {"card": 1})  # 13 digits, not an EAN
    assert _zh(f"证件 {VALID_ID}") == ("证件 <身份证号>", {"id": 1})
    assert luhn_ok("0085261234000")  # an international call prefix, not a card
    assert R.redact("WhatsApp 0085261234000") == ("WhatsApp <PHONE>", {"phone": 1})


@pytest.mark.parametrize("typ,text", [
    ("phone", "13800138000"), ("phone", "+852 2123 4567"), ("email", "a.b@example.com"),
    ("id", VALID_ID), ("card", "4111 1111 1111 1111"), ("ip", "10.0.0.1"), ("url", "https://t.cn/x"),
])
def test_placeholders_in_caption_language(typ, text):
    zh, counts = _zh(f"详情 {text} 谢谢")
    assert counts == {typ: 1}
    mark = zh[len("详情 "):-len(" 谢谢")]
    assert mark in PLACEHOLDERS["zh"].values() and any("\u4e00" <= c <= "\u9fff" for c in mark), mark
    en, _ = R.redact(f"see {text} thanks")
    mark = en[len("see "):-len(" thanks")]
    assert mark in PLACEHOLDERS["en"].values() and mark.isascii(), mark


def test_action_remove_and_reject():
    from filters.pii import redact_pii

    rm = PiiRedactor(action="remove")
    assert rm.redact("call 13800138000 today") == ("call today", {"phone": 1})
    assert rm.redact("联系电话：0571-87654321转8001，欢迎", "zh") == ("联系电话：，欢迎", {"phone": 1})
    assert rm.redact("mail a.b@example.com") == ("mail", {"email": 1})
    rej = PiiRedactor(action="reject")
    assert rej.redact("call +852 6123 4567 now") == ("call <PHONE> now", {"phone": 1})
    assert redact_pii("call +852 6123 4567 now", action="remove") == ("call now", {"phone": 1})
    with pytest.raises(ValueError, match="unknown PII action"):
        PiiRedactor(action="drop")


def test_no_digits_no_candidates_fast_path():
    from filters.pii import PHONE_SCAN_RE

    assert PHONE_SCAN_RE.search("a dog runs on the grass near 12 trees in 2024") is None


def test_recipe_switches_reach_the_cleaner_and_select():
    import pyarrow as pa
    from pydantic import ValidationError

    from filters.text import CaptionCleaner, TextConfig
    from pipeline.config import AnnotateConfig
    from stages.select import PII_COLUMNS, pii_rules

    cfg = AnnotateConfig(pii_action="remove", phone_regions=["cn", "hk"])
    assert cfg.phone_regions == ["CN", "HK"]
    with pytest.raises(ValidationError, match="unknown phone regions"):
        AnnotateConfig(phone_regions=["ZZ"])
    with pytest.raises(ValidationError):
        AnnotateConfig(pii_action="drop")
    cleaner = CaptionCleaner(TextConfig(sensitive_lexicon="", pii_action=cfg.pii_action,
                                        phone_regions=tuple(cfg.phone_regions)), names=None)
    row = cleaner.clean("a red tram in Central, call 6123 4567 today")
    assert row["caption"] == "a red tram in Central, call today" and row["pii_phone"] == 1
    # reject: select names the reason from the counts annotate recorded
    (rule,) = pii_rules()
    counts = {c: [0, 0, None] for c in PII_COLUMNS}
    counts["pii_phone"] = [1, 0, None]
    assert rule.check(pa.table(counts)) == ["pii_caption", None, None]


def test_old_seven_digit_landline_needs_a_phone_word():
    # Changsha numbers have had 8 local digits since 2008; a 7-digit one is the old plan.
    assert _zh("咨询热线 0731-3128965")[1] == {"phone": 1}
    assert _zh("编号 0731-3128965")[1] == {}


def test_select_stage_rejects_pii_only_when_annotate_says_reject():
    from types import SimpleNamespace

    from pipeline.config import AnnotateConfig, SelectConfig
    from pipeline.stage import RunContext
    from stages.select import SelectStage

    def reasons(action):
        recipe = SimpleNamespace(stages=["download", "annotate", "select"], score=None, capfilt=None,
                                 annotate=AnnotateConfig(pii_action=action))
        return [r.reason for r in SelectStage(SelectConfig(), RunContext("/tmp", recipe)).rules]

    assert "pii_caption" in reasons("reject")
    assert "pii_caption" not in reasons("placeholder") and "pii_caption" not in reasons("remove")


def test_phone_word_must_be_a_word():
    assert R.redact("call 2123-4567 now")[1] == {"phone": 1}
    assert R.redact("shop online 2123-4567 now")[1] == {}  # "online" is not "line"


@pytest.mark.parametrize("text, number", [
    ("門市地址：彌敦道123號 2123-4291", "2123-4291"),       # Hong Kong landline, dashes
    ("6612-3550 24小时服务", "6612-3550"),                  # Macau mobile
    ("Jenny 2015550123 - wedding photographer", "2015550123"),  # US, compact
])
def test_bare_national_numbers_need_the_switch(text, number):
    # Written bare, with no phone word, these read like SKUs: left alone by default, redacted
    # when the recipe says its captions carry such numbers (annotate.phone_bare_numbers).
    assert ("phone", number) not in PiiRedactor().find(text)
    assert ("phone", number) in PiiRedactor(bare_phones=True).find(text)


def test_bare_number_switch_reaches_the_cleaner():
    from filters.text import CaptionCleaner, TextConfig
    from pipeline.config import AnnotateConfig
    from stages.annotate import AnnotateStage

    cfg = AnnotateConfig(phone_bare_numbers=True)
    stage = AnnotateStage(cfg, None)
    tc = stage.text_config()
    assert tc.phone_bare_numbers is True
    clean = CaptionCleaner(tc, names=None)
    assert "2123-4291" not in clean.clean("門市地址：彌敦道123號 2123-4291")["caption"]
    assert "2123-4291" in CaptionCleaner(TextConfig(), names=None).clean(
        "門市地址：彌敦道123號 2123-4291")["caption"]
