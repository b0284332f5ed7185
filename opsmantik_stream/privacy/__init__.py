"""Privacy (GDPR / KVKK): consent updates, erase, export and retention (docs/privacy.md).

- ``consent``: the signed consent endpoint's body and the scope update;
- ``subject``: naming a data subject and finding every row of a site tied to it;
- ``erase``: anonymising those rows (shared with retention);
- ``export``: the streamed JSON document;
- ``retention``: the ``privacy_retention`` job.

The consent rules for conversions live in the schema (migration 0007): a marketing
withdrawal voids a session's pending conversions, and no conversion becomes pending without
marketing consent, whichever path changes the session or the queue.
"""

from opsmantik_stream.privacy.consent import ConsentBody, apply_consent
from opsmantik_stream.privacy.erase import anonymize, erase_subject, privacy_key
from opsmantik_stream.privacy.export import export_document, plan_export
from opsmantik_stream.privacy.retention import last_run, privacy_retention, run_retention
from opsmantik_stream.privacy.subject import (
    PrivacyError,
    Subject,
    SubjectRows,
    normalize_identifier,
    resolve_subject,
    subject_hash,
)

__all__ = [
    "ConsentBody",
    "PrivacyError",
    "Subject",
    "SubjectRows",
    "anonymize",
    "apply_consent",
    "erase_subject",
    "export_document",
    "last_run",
    "normalize_identifier",
    "plan_export",
    "privacy_key",
    "privacy_retention",
    "resolve_subject",
    "run_retention",
    "subject_hash",
]
