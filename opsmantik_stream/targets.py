"""Phone and WhatsApp targets (SPEC §3 step 8): the one place their normal form is decided.

A tracker click (``opsmantik_stream.ingest.intents``), a signed call event
(``opsmantik_stream.leads.call_events``) and a privacy subject look-up all store or compare
``calls.intent_target``; the same number reaching us by any of those paths must give the same
text, so all of them call this module. Canonical forms: ``tel:+<digits>`` (Turkish national
forms become +90), ``wa:+<digits>``, ``wa:chat/<code>``, ``wa:joinchat/<code>`` or
``wa:<host><path>``; ``tel:unknown`` / ``wa:unknown`` when nothing usable is left.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from opsmantik_stream.enums import IntentAction

__all__ = [
    "WHATSAPP_MARKERS",
    "infer_action",
    "looks_like_whatsapp",
    "normalize_phone",
    "normalize_target",
    "normalize_whatsapp",
    "phone_e164",
    "target_phone_number",
]

# a link or label containing one of these is a WhatsApp target (chat.whatsapp.com and
# api.whatsapp.com are covered by "whatsapp.com")
WHATSAPP_MARKERS = ("wa.me", "whatsapp.com", "whatsapp://", "joinchat")
_DIGITS = frozenset("0123456789")


def _digits(text: str) -> str:
    return "".join(c for c in text if c in _DIGITS)


def looks_like_whatsapp(text: str | None) -> bool:
    """Whether a link, label or number text names a WhatsApp target (case-insensitive)."""
    lower = (text or "").strip().lower()
    return any(m in lower for m in WHATSAPP_MARKERS)


def infer_action(explicit: str | None, raw: str | None) -> IntentAction:
    """Phone or WhatsApp: an explicit action wins (``whatsapp``, any case, else phone);
    otherwise the shape of ``raw``."""
    if explicit and explicit.strip():
        return IntentAction.WHATSAPP if explicit.strip().lower() == "whatsapp" else IntentAction.PHONE
    return IntentAction.WHATSAPP if looks_like_whatsapp(raw) else IntentAction.PHONE


def phone_e164(raw: str | None) -> str | None:
    """``+<digits>`` from a phone text or ``tel:`` link, or None when it has no digits.

    Percent-escapes are decoded; ``;ext=..`` and ``?..`` parameters are not part of the
    number. Keeps digits and ``+``; a leading ``00`` is ``+``. Without ``+``, Turkish national
    forms become +90: 10 digits (``5321234567``) or 11 starting with 0 (``05321234567``); any
    other digit string is taken as international.
    """
    if not raw:
        return None
    text = unquote(raw).strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    text = text.split(";", 1)[0].split("?", 1)[0]
    kept = "".join(c for c in text if c in _DIGITS or c == "+")
    if kept.startswith("00"):
        kept = "+" + kept[2:]
    digits = kept.replace("+", "")
    if not digits:
        return None
    if not kept.startswith("+"):
        if len(digits) == 10:
            return "+90" + digits
        if len(digits) == 11 and digits.startswith("0"):
            return "+90" + digits[1:]
    return "+" + digits


def normalize_phone(raw: str | None) -> str:
    """``tel:+<digits>`` or ``tel:unknown``."""
    number = phone_e164(raw)
    return f"tel:{number}" if number else "tel:unknown"


def _whatsapp_scheme(text: str) -> str:
    rest = text[len("whatsapp://") :]
    query = rest.split("?", 1)[1] if "?" in rest else ""
    params = dict(parse_qsl(query))
    number = phone_e164(params.get("phone") or params.get("p"))
    if number:
        return f"wa:{number}"
    return f"wa:{rest}" if rest else "wa:unknown"


def normalize_whatsapp(raw: str | None) -> str:
    """The WhatsApp target of a link, attribute value or number (first rule that matches):
    ``phone``/``p`` parameter -> ``wa:+<digits>``; ``whatsapp://x`` -> ``wa:x``; wa.me/<number>
    -> ``wa:+<digits>``; chat.whatsapp.com/<code> -> ``wa:chat/<code>``; a ``joinchat/<code>``
    path -> ``wa:joinchat/<code>``; a path with >= 10 digits -> ``wa:+<digits>``; otherwise
    ``wa:<host><path>``, or ``wa:unknown``."""
    text = (raw or "").strip()
    if not text:
        return "wa:unknown"
    if text.lower().startswith("whatsapp://"):
        return _whatsapp_scheme(text)
    try:
        parts = urlsplit(text if "://" in text or text.startswith("//") else "//" + text)
        host = (parts.hostname or "").lower()
    except ValueError:
        digits = _digits(text)
        return f"wa:{phone_e164(digits)}" if len(digits) >= 10 else "wa:unknown"
    params = dict(parse_qsl(parts.query))
    number = phone_e164(params.get("phone") or params.get("p"))
    if number:
        return f"wa:{number}"
    path = parts.path or ""
    segments = [s for s in path.split("/") if s]
    if host == "wa.me" and segments and _digits(segments[0]) == segments[0].lstrip("+"):
        number = phone_e164(segments[0])
        if number:
            return f"wa:{number}"
    if host == "chat.whatsapp.com" and segments:
        return f"wa:chat/{segments[0]}"
    if len(segments) >= 2 and segments[0].lower() == "joinchat":
        return f"wa:joinchat/{segments[1]}"
    if "." not in host and not path and len(_digits(text)) >= 10:
        # a bare number such as data-om-whatsapp="0532 123 45 67" parses as a host
        return f"wa:{phone_e164(text)}"
    if len(_digits(path)) >= 10:
        return f"wa:{phone_e164(_digits(path))}"
    if host:
        return f"wa:{host}{path.rstrip('/')}"
    return "wa:unknown"


def normalize_target(action: IntentAction | str, raw: str | None) -> str:
    """The target of ``raw`` for a phone or WhatsApp action."""
    return normalize_whatsapp(raw) if action == IntentAction.WHATSAPP else normalize_phone(raw)


def target_phone_number(target: str) -> str | None:
    """The ``+<digits>`` number inside a ``tel:+...`` or ``wa:+...`` target, if any."""
    for prefix in ("tel:+", "wa:+"):
        if target.startswith(prefix):
            return target[len(prefix) - 1 :]
    return None
