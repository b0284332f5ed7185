"""The one rule for phone and WhatsApp targets (``opsmantik_stream.targets``), shared by the
tracker-click path and the call-event path. The integration twin feeding both paths on a
served stack is tests/integration/test_targets_both_paths.py."""

from __future__ import annotations

import pytest

from opsmantik_stream.enums import IntentAction
from opsmantik_stream.targets import (
    infer_action,
    looks_like_whatsapp,
    normalize_phone,
    normalize_target,
    normalize_whatsapp,
    target_phone_number,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        ("tel:+90 532 123 45 67", "tel:+905321234567"),
        ("tel:05321234567", "tel:+905321234567"),
        ("tel:5321234567", "tel:+905321234567"),
        ("tel:0090-532-123-4567", "tel:+905321234567"),
        ("tel:905321234567", "tel:+905321234567"),
        ("tel:%2B905321234567;ext=22", "tel:+905321234567"),
        # issue 12: the call-event copy kept the extension's digits (tel:+053212345672)
        ("tel:0532 123 45 67;ext=2", "tel:+905321234567"),
        ("tel:+1 (202) 555-0100", "tel:+12025550100"),
        ("TEL:0212 444 0 444", "tel:+902124440444"),
        ("+90 555 111 22 33", "tel:+905551112233"),
        ("0555 111 22 33", "tel:+905551112233"),
        ("5551112233", "tel:+905551112233"),
        ("0049 30 1234567", "tel:+49301234567"),
        ("tel:", "tel:unknown"),
        ("", "tel:unknown"),
        (None, "tel:unknown"),
    ],
)
def test_phone_targets(raw: str | None, target: str) -> None:
    assert normalize_phone(raw) == target
    assert normalize_target(IntentAction.PHONE, raw) == target


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        ("https://wa.me/905321234567", "wa:+905321234567"),
        ("https://wa.me/905321234567?text=Merhaba", "wa:+905321234567"),
        ("https://api.whatsapp.com/send?phone=905321234567&text=x", "wa:+905321234567"),
        ("https://api.whatsapp.com/send?phone=05321234567", "wa:+905321234567"),
        ("whatsapp://send?phone=+905321234567", "wa:+905321234567"),
        ("whatsapp://send?text=hello", "wa:send?text=hello"),
        ("https://chat.whatsapp.com/AbCdEf123", "wa:chat/AbCdEf123"),
        ("https://api.whatsapp.com/joinchat/XYZ", "wa:joinchat/XYZ"),
        # issue 12: the call-event copy stored this as wa:chat/ABC
        ("https://whatsapp.com/joinchat/ABC", "wa:joinchat/ABC"),
        ("https://wa.me/message/ABCDEF", "wa:wa.me/message/ABCDEF"),
        ("https://www.whatsapp.com/catalog/123", "wa:www.whatsapp.com/catalog/123"),
        ("https://example.com/whatsapp-redirect", "wa:example.com/whatsapp-redirect"),
        ("0532 123 45 67", "wa:+905321234567"),
        ("https://example.com/iletisim/905321234567", "wa:+905321234567"),
        ("", "wa:unknown"),
        (None, "wa:unknown"),
    ],
)
def test_whatsapp_targets(raw: str | None, target: str) -> None:
    assert normalize_whatsapp(raw) == target
    assert normalize_target(IntentAction.WHATSAPP, raw) == target


def test_action_inference() -> None:
    assert infer_action(None, "https://wa.me/90555") == IntentAction.WHATSAPP
    assert infer_action(None, "WHATSAPP://send?phone=1") == IntentAction.WHATSAPP
    assert infer_action(None, "https://api.whatsapp.com/joinchat/X") == IntentAction.WHATSAPP
    assert infer_action("WhatsApp", "+90555") == IntentAction.WHATSAPP
    assert infer_action("phone", "https://wa.me/90555") == IntentAction.PHONE
    assert infer_action(" ", "https://wa.me/90555") == IntentAction.WHATSAPP
    assert infer_action(None, "+90 555") == IntentAction.PHONE
    assert looks_like_whatsapp("https://CHAT.WhatsApp.com/x") and not looks_like_whatsapp(None)


def test_number_inside_a_target() -> None:
    assert target_phone_number("tel:+905321234567") == "+905321234567"
    assert target_phone_number("wa:+905321234567") == "+905321234567"
    assert target_phone_number("wa:chat/AbC") is None
    assert target_phone_number("tel:unknown") is None
