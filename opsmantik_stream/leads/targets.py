"""Intent action and target of a call event (pure).

The canonical forms follow SPEC §3 step 8 so a call event and a tracker click on the same
number carry the same target: ``tel:+<digits>`` (Turkish national forms to +90) and
``wa:+<digits>``, ``wa:chat/<code>`` or ``wa:<host><path>``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

__all__ = ["infer_action", "normalize_phone", "normalize_target", "normalize_whatsapp"]

_WA_MARKERS = ("wa.me", "whatsapp.com", "joinchat")


def infer_action(explicit: str | None, phone_number: str | None) -> str:
    """``whatsapp`` or ``phone``: the explicit override wins, else the shape of the number."""
    if explicit:
        return "whatsapp" if explicit.strip().lower() == "whatsapp" else "phone"
    raw = (phone_number or "").strip().lower()
    if raw.startswith("whatsapp://") or any(m in raw for m in _WA_MARKERS):
        return "whatsapp"
    return "phone"


def _digits_e164(raw: str) -> str | None:
    text = raw.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    plus = text.startswith("+")
    digits = re.sub(r"\D", "", text)
    if not digits:
        return None
    if not plus and digits.startswith("00"):
        return "+" + digits[2:]
    if plus:
        return "+" + digits
    if len(digits) == 10:
        return "+90" + digits
    if len(digits) == 11 and digits.startswith("0"):
        return "+90" + digits[1:]
    return "+" + digits


def normalize_phone(raw: str | None) -> str:
    """``tel:+<digits>`` or ``tel:unknown``."""
    e164 = _digits_e164(raw or "")
    return f"tel:{e164}" if e164 else "tel:unknown"


def normalize_whatsapp(raw: str | None) -> str:
    """``wa:+<digits>``, ``wa:chat/<code>``, ``wa:<host><path>`` or ``wa:unknown``."""
    text = (raw or "").strip()
    if not text:
        return "wa:unknown"
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    query = parse_qs(parts.query)
    phone = (query.get("phone") or query.get("p") or [""])[0]
    if phone:
        e164 = _digits_e164(phone if phone.startswith("+") else "+" + phone)
        if e164:
            return f"wa:{e164}"
    path = parts.path.strip("/")
    if host == "wa.me" and path.isdigit() and len(path) >= 7:
        return f"wa:+{path}"
    if host.startswith("chat.whatsapp.com") and path:
        return f"wa:chat/{path.split('/')[-1]}"
    if "joinchat" in path:
        return f"wa:chat/{path.split('/')[-1]}"
    digits = re.sub(r"\D", "", path)
    if len(digits) >= 10 and path.replace("+", "").isdigit():
        return f"wa:+{digits}"
    return f"wa:{host}{parts.path}".rstrip("/") if host else "wa:unknown"


def normalize_target(action: str, raw: str | None) -> str:
    return normalize_whatsapp(raw) if action == "whatsapp" else normalize_phone(raw)
