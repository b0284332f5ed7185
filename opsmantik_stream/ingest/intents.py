"""Intent detection and target normalisation (SPEC.md §3 step 8).

A phone, WhatsApp or form conversion becomes (part of) the session's single intent card.
Targets are normalised so the same number clicked through ``tel:0532 ...``,
``tel:+90532...`` or ``wa.me/90532...`` compares equal: ``tel:+<digits>``,
``wa:+<digits>``, ``wa:chat/<code>``, ``wa:joinchat/<code>`` or ``wa:<host><path>``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from opsmantik_stream.enums import IntentAction

__all__ = [
    "FORM_ACTIONS",
    "PHONE_ACTIONS",
    "WHATSAPP_ACTIONS",
    "detect_intent",
    "intent_target",
    "normalize_phone",
    "normalize_whatsapp",
    "phone_e164",
    "target_phone_number",
]

PHONE_ACTIONS = frozenset({"phone_call", "phone_click", "call_click", "tel_click"})
WHATSAPP_ACTIONS = frozenset({"whatsapp", "whatsapp_click", "wa_click", "joinchat"})
FORM_ACTIONS = frozenset({"form_submit"})
_WA_MARKERS = ("wa.me", "whatsapp.com", "whatsapp://", "joinchat")
_DIGITS = frozenset("0123456789")


def detect_intent(
    ec: str | None, ea: str | None, el: str | None, meta_intent_action: str | None = None
) -> IntentAction | None:
    """Phone, WhatsApp or form intent of an event, or None. Phone wins a tie.

    The action is ``meta.intent_action`` or ``ea``; a conversion whose label is a ``tel:``
    or WhatsApp link also counts (older trackers).
    """
    cat = (ec or "").strip().lower()
    if cat == "system":
        return None
    action = (meta_intent_action or ea or "").strip().lower()
    label = (el or "").strip().lower()
    conversion = cat == "conversion"
    if action in PHONE_ACTIONS or (conversion and label.startswith("tel:")):
        return IntentAction.PHONE
    if action in WHATSAPP_ACTIONS or (conversion and any(m in label for m in _WA_MARKERS)):
        return IntentAction.WHATSAPP
    if conversion and (action in FORM_ACTIONS or action.startswith("form_submit")):
        return IntentAction.FORM
    return None


def phone_e164(raw: str | None) -> str | None:
    """``+<digits>`` from a phone text or ``tel:`` link, or None when it has no digits.

    Keeps digits and ``+``; a leading ``00`` is ``+``. Without ``+``, Turkish national forms
    become +90: 10 digits (``5321234567``) or 11 starting with 0 (``05321234567``); any
    other digit string is taken as international.
    """
    if not raw:
        return None
    text = unquote(raw).strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    # tel:+90...;ext=1 or ?foo: parameters are not part of the number
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


def _digits(text: str) -> str:
    return "".join(c for c in text if c in _DIGITS)


def normalize_whatsapp(raw: str | None) -> str:
    """The WhatsApp target of a link, attribute value or number (first rule that matches):
    ``phone``/``p`` parameter -> ``wa:+<digits>``; ``whatsapp://x`` -> ``wa:x``; wa.me/<number>
    -> ``wa:+<digits>``; chat.whatsapp.com/<code> -> ``wa:chat/<code>``; a ``joinchat/<code>``
    path -> ``wa:joinchat/<code>``; a path with >= 10 digits -> ``wa:+<digits>``; otherwise
    ``wa:<host><path>``, or ``wa:unknown``."""
    text = (raw or "").strip()
    if not text:
        return "wa:unknown"
    lower = text.lower()
    if lower.startswith("whatsapp://"):
        rest = text[len("whatsapp://") :]
        query = rest.split("?", 1)[1] if "?" in rest else ""
        params = dict(parse_qsl(query))
        number = phone_e164(params.get("phone") or params.get("p"))
        if number:
            return f"wa:{number}"
        return f"wa:{rest}" if rest else "wa:unknown"
    try:
        parts = urlsplit(text if "://" in text or text.startswith("//") else "//" + text)
        host = (parts.hostname or "").lower()
    except ValueError:
        parts, host = None, ""
    if parts is None:
        digits = _digits(text)
        return f"wa:{phone_e164(digits)}" if len(digits) >= 10 else "wa:unknown"
    params = dict(parse_qsl(parts.query))
    number = phone_e164(params.get("phone") or params.get("p"))
    if number:
        return f"wa:{number}"
    path = parts.path or ""
    segments = [s for s in path.split("/") if s]
    if host == "wa.me" and segments:
        number = phone_e164(segments[0]) if _digits(segments[0]) == segments[0].lstrip("+") else None
        if number:
            return f"wa:{number}"
    if host == "chat.whatsapp.com" and segments:
        return f"wa:chat/{segments[0]}"
    if len(segments) >= 2 and segments[0].lower() == "joinchat":
        return f"wa:joinchat/{segments[1]}"
    if "." not in host and not path:
        # a bare number such as data-om-whatsapp="0532 123 45 67" parses as a host
        digits = _digits(text)
        if len(digits) >= 10:
            return f"wa:{phone_e164(text)}"
    if len(_digits(path)) >= 10:
        return f"wa:{phone_e164(_digits(path))}"
    if host:
        return f"wa:{host}{path.rstrip('/')}"
    return "wa:unknown"


def intent_target(action: IntentAction, el: str | None, phone_number: str | None) -> str:
    """The normalised target of an intent event (the link in ``el``, else ``meta.phone_number``)."""
    if action == IntentAction.PHONE:
        raw = el if el and any(c in _DIGITS for c in el) else phone_number
        return normalize_phone(raw or el)
    if action == IntentAction.WHATSAPP:
        return normalize_whatsapp(el or phone_number)
    label = (el or "").strip() or "form"
    return f"form:{label[:200]}"


def target_phone_number(target: str) -> str | None:
    """The ``+<digits>`` number inside a ``tel:+...`` or ``wa:+...`` target, if any."""
    for prefix in ("tel:+", "wa:+"):
        if target.startswith(prefix):
            return target[len(prefix) - 1 :]
    return None
