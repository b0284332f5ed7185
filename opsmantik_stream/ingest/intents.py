"""Intent detection of tracker events (SPEC.md §3 step 8).

A phone, WhatsApp or form conversion becomes (part of) the session's single intent card.
Phone and WhatsApp targets are normalised by ``opsmantik_stream.targets``, the same rule a
signed call event uses, so the same number compares equal whichever way it reached us.
"""

from __future__ import annotations

from opsmantik_stream.enums import IntentAction

# target_phone_number is re-exported for ingest/store.py, which imports it from here
from opsmantik_stream.targets import looks_like_whatsapp, normalize_phone, normalize_whatsapp, target_phone_number

__all__ = [
    "FORM_ACTIONS",
    "PHONE_ACTIONS",
    "WHATSAPP_ACTIONS",
    "detect_intent",
    "intent_target",
    "target_phone_number",
]

PHONE_ACTIONS = frozenset({"phone_call", "phone_click", "call_click", "tel_click"})
WHATSAPP_ACTIONS = frozenset({"whatsapp", "whatsapp_click", "wa_click", "joinchat"})
FORM_ACTIONS = frozenset({"form_submit"})
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
    if action in WHATSAPP_ACTIONS or (conversion and looks_like_whatsapp(label)):
        return IntentAction.WHATSAPP
    if conversion and (action in FORM_ACTIONS or action.startswith("form_submit")):
        return IntentAction.FORM
    return None


def intent_target(action: IntentAction, el: str | None, phone_number: str | None) -> str:
    """The normalised target of an intent event (the link in ``el``, else ``meta.phone_number``)."""
    if action == IntentAction.PHONE:
        raw = el if el and any(c in _DIGITS for c in el) else phone_number
        return normalize_phone(raw or el)
    if action == IntentAction.WHATSAPP:
        return normalize_whatsapp(el or phone_number)
    label = (el or "").strip() or "form"
    return f"form:{label[:200]}"
