"""Roles and capabilities per site (mirrors the ``role_capabilities`` table)."""

from __future__ import annotations

from enum import StrEnum

from opsmantik_stream.enums import SiteRole

__all__ = ["CAPABILITIES", "Capability", "role_can"]


class Capability(StrEnum):
    SITE_READ = "site:read"
    SITE_WRITE = "site:write"
    MEMBERS_MANAGE = "members:manage"
    LEADS_OPERATE = "leads:operate"
    QUEUE_OPERATE = "queue:operate"
    BILLING_VIEW = "billing:view"
    # data-subject requests: erase and export (GDPR / KVKK)
    PRIVACY_MANAGE = "privacy:manage"


_ALL = frozenset(Capability)

CAPABILITIES: dict[SiteRole, frozenset[Capability]] = {
    SiteRole.OWNER: _ALL,
    SiteRole.ADMIN: _ALL,
    SiteRole.OPERATOR: frozenset({Capability.SITE_READ, Capability.LEADS_OPERATE, Capability.QUEUE_OPERATE}),
    SiteRole.BILLING: frozenset({Capability.SITE_READ, Capability.BILLING_VIEW}),
    SiteRole.ANALYST: frozenset({Capability.SITE_READ}),
}


def role_can(role: SiteRole | str | None, capability: Capability | str) -> bool:
    if role is None:
        return False
    try:
        return Capability(capability) in CAPABILITIES[SiteRole(role)]
    except ValueError:
        return False
