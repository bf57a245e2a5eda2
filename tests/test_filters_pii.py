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


@pytest.mark.parametrize("phone", ["010-88888888", "(010) 8888 8888", "0755-12345678", "021 6234 5678", "0571-8765432"])
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
    out, counts = R.redact("Call (555) 123-4567 or +1 555.123.4567 today")
    assert out == "Call <PHONE> or <PHONE> today" and counts == {"phone": 2}


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
    assert out == "张三 <手机号> <邮箱> <身份证号> <IP> <网址>"


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
