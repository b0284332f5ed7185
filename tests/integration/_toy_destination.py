"""A toy third destination: all that adding one takes, besides one registry line and one
migration (``SELECT allow_destination('toy')``). See docs/destinations.md.

The "Toy conversions API" takes ``POST {endpoint}/v1/conversions`` with an API key header and
answers one result per event: ``{"status": "ok"}`` or ``{"status": "error", "code": ...}``; a
wrong key is a 401 ``BAD_KEY``. A real destination reads its endpoint from a deployment setting;
the toy's is set by the test that serves it (:attr:`ToyDestination.endpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import httpx
import msgspec

from opsmantik_stream.destinations.base import (
    BeforeRequest,
    Classification,
    Conversion,
    Destination,
    ErrorCategory,
    OutcomeKind,
    RowOutcome,
    UploadResult,
    credentials_command,
)


class ToyCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    account: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{3,40}$")]
    api_key: Annotated[str, msgspec.Meta(min_length=8, max_length=200)]


class ToyDestination(Destination):
    name = "toy"
    label = "Toy conversions API (tests)"
    credentials_schema = ToyCredentials
    credential_help: ClassVar[dict[str, str]] = {"account": "toy account name", "api_key": "toy API key"}
    secret_fields = frozenset({"api_key"})
    max_batch = 50
    endpoint: ClassVar[str] = "http://127.0.0.1:9"

    @classmethod
    def account_id(cls, creds: Any) -> str:
        return str(creds.account)

    @classmethod
    def classify(cls, http_status: int, error_code: str | None, retry_delay_s: float | None = None) -> Classification:
        if error_code == "BAD_KEY":
            return Classification(OutcomeKind.BLOCKED, ErrorCategory.AUTH)
        if error_code == "BAD_CLICK":
            return Classification(OutcomeKind.FAILED, ErrorCategory.VALIDATION)
        if http_status == 200 and error_code is None:
            return Classification(OutcomeKind.COMPLETED)
        return Classification(OutcomeKind.RETRY, ErrorCategory.TRANSIENT, retry_delay_s)

    @classmethod
    def blocked_hint(
        cls, code: str | None, *, public_id: str, site_destination: str, site_has_credentials: bool
    ) -> str | None:
        if code == "BAD_KEY":
            return f"the toy API key was refused: store the current one with {credentials_command(public_id, cls.name)}"
        return None

    async def upload(
        self, creds: Any, conversions: Sequence[Conversion], *, before_request: BeforeRequest | None = None
    ) -> UploadResult:
        result = UploadResult(destination=self.name, rows=[])
        if before_request is not None and (hold := await before_request(len(conversions))) is not None:
            c = Classification(OutcomeKind.DEFERRED, ErrorCategory.RATE_LIMIT, hold)
            result.rows = [self._row(i, conv, c, "ACCOUNT_PAUSED", None, 0) for i, conv in enumerate(conversions)]
            return result
        body = {
            "account": creds.account,
            "events": [
                {"id": c.order_id, "click": c.gclid, "value": c.value_minor, "currency": c.currency}
                for c in conversions
            ],
        }
        result.requests_sent = 1
        try:
            resp = await self.ctx.http.post(
                f"{self.endpoint}/v1/conversions", json=body, headers={"x-api-key": creds.api_key}
            )
        except httpx.HTTPError as exc:
            c = self.classify(0, None)
            result.rows = [
                self._row(i, conv, c, "NETWORK_ERROR", type(exc).__name__, 0) for i, conv in enumerate(conversions)
            ]
            return result
        result.http_status = resp.status_code
        answer = resp.json()
        if resp.status_code != 200:
            code = answer.get("code")
            c = self.classify(resp.status_code, code)
            result.error_code, result.error_category = code, c.category
            result.rows = [
                self._row(i, conv, c, code, answer.get("message"), resp.status_code)
                for i, conv in enumerate(conversions)
            ]
            return result
        for i, (conv, r) in enumerate(zip(conversions, answer["results"], strict=True)):
            code = r.get("code")
            result.rows.append(self._row(i, conv, self.classify(200, code), code, r.get("message"), 200))
        return result

    @staticmethod
    def _row(i: int, conv: Conversion, c: Classification, code: str | None, msg: str | None, status: int) -> RowOutcome:
        return RowOutcome(conv.queue_id, i, c.kind, code, c.category, msg, c.retry_delay_s, None, status)
