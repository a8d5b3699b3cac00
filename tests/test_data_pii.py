from collections import Counter

import pytest

from llmlab.data.pii import cn_id_valid, luhn_valid, scrub_pii


def _id_check(first17: str) -> str:
    w = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return first17 + "10X98765432"[sum(int(d) * k for d, k in zip(first17, w)) % 11]


def test_cn_id_checksum_hand_computed():
    # 11010519491231002X is the GB 11643-1999 worked example: weighted sum 167, 167 % 11 = 2 -> 'X'
    assert cn_id_valid("11010519491231002X")
    assert cn_id_valid("11010519491231002x")
    assert not cn_id_valid("110105194912310021")     # wrong check character
    assert not cn_id_valid(_id_check("11010519491331002"))  # month 13: not a date
    assert cn_id_valid(_id_check("44030419900307123"))


def test_luhn_hand_computed():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")


PLANTED = {
    "email": ["jane.doe+news@example.co.uk", "li_wei@mail.tsinghua.edu.cn"],
    "phone": ["13812345678", "+86 138 1234 5678", "0086-13912345678", "+1 (415) 555-0134", "(212) 555-1234",
              "415-555-0134", "020-12345678"],
    "cn_id": ["11010519491231002X", _id_check("44030419900307123")],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "ip": ["192.168.1.1", "8.8.8.8", "2001:db8::8a2e:370:7334", "fe80::1"],
}
PLACEHOLDER = {"email": "<EMAIL>", "phone": "<PHONE>", "cn_id": "<ID_NUMBER>", "card": "<CARD_NUMBER>",
               "ip": "<IP_ADDRESS>"}


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in PLANTED.items() for v in vs])
def test_planted_pii_is_replaced(kind, value):
    c = Counter()
    for text in (f"contact: {value}.", f"请联系{value}，谢谢", f"({value})"):
        out = scrub_pii(text, c)
        assert value not in out and PLACEHOLDER[kind] in out, (text, out)
    assert c[kind] == 3 and sum(c.values()) == 3


NOT_PII = ["in 1998年 the GDP grew 3.14%", "version 1.2.3 released", "meet at 12:30:45", "2001: A Space Odyssey",
           "ID-like 110105194912310021 with a bad checksum", "1234567890123456 fails Luhn",
           "4111-1111-1111-1112", "population 200000000", "std::vector and a::b", "ISBN 978-3-16-148410-0",
           "the years 1999-2000", "256.1.1.1 is no address", "dates 2023-10-12", "1.2.3.4.5",
           "tel 5551234", "学号 20230001 班级 3"]


@pytest.mark.parametrize("text", NOT_PII)
def test_non_pii_survives(text):
    c = Counter()
    assert scrub_pii(text, c) == text
    assert not c


def test_mixed_document():
    text = ("Write to bob@example.org or call 13912345678. Server 10.0.0.7 logged card "
            "4111111111111111 for ID 11010519491231002X in 1998.")
    c = Counter()
    out = scrub_pii(text, c)
    assert out == ("Write to <EMAIL> or call <PHONE>. Server <IP_ADDRESS> logged card "
                   "<CARD_NUMBER> for ID <ID_NUMBER> in 1998.")
    assert c == Counter(email=1, phone=1, ip=1, card=1, cn_id=1)
