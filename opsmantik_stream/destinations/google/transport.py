"""What both Google destinations do alike: row checks, chunking, OAuth, the POST, verdicts.

:class:`GoogleDestination` implements :meth:`Destination.upload` once; a Google destination
adds only its request (:meth:`GoogleDestination.build_request`) and how to read the answer
(:meth:`GoogleDestination.parse_reply`). The OAuth token cache is one per uploader, shared by
both Google destinations (``DestinationContext.shared``), with the deployment's token URL.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
import msgspec

from opsmantik_stream.destinations.base import (
    BeforeRequest,
    CheckStep,
    Classification,
    Conversion,
    Destination,
    DestinationContext,
    ErrorCategory,
    Operation,
    OutcomeKind,
    RowOutcome,
    UploadResult,
    credentials_command,
)
from opsmantik_stream.destinations.google.classify import classify
from opsmantik_stream.destinations.google.credentials import (
    GOOGLE_CREDENTIAL_HELP,
    GOOGLE_SECRET_FIELDS,
    GoogleCredentials,
    action_id,
    digits,
)
from opsmantik_stream.destinations.google.mapping import (
    has_identifier,
    parse_duration,
    pick_click_id,
    request_id_from_headers,
)
from opsmantik_stream.destinations.google.oauth import OAuthConfigError, OAuthError, TokenProvider
from opsmantik_stream.fields import is_currency_code

__all__ = ["OK", "ChunkResult", "GoogleDestination", "Reply", "Verdict", "verdict"]

# telemetry.UPLOADER_METRICS names this module records
_DURATION = "opsmantik_upload_request_duration_seconds"
_RESPONSES = "opsmantik_upload_responses"
#: Google rejects more than 2,000 conversions (or events) in one request.
MAX_CHUNK_SIZE = 2000
#: The click id of the connection test's validate-only conversion: not a real click, so Google
#: may refuse it (a row error about the click id means the account and action were accepted).
TEST_CLICK_ID = "opsmantik-connection-test"
_PERMISSION = frozenset({"USER_PERMISSION_DENIED", "PERMISSION_DENIED", "CUSTOMER_NOT_FOUND", "INVALID_CUSTOMER_ID"})
_ACTION = frozenset(
    {
        "NO_CONVERSION_ACTION_FOUND",
        "INVALID_CONVERSION_ACTION_ID",
        "INVALID_CONVERSION_ACTION",
        "RESOURCE_NAME_MALFORMED",
    }
)

_SEVERITY = {
    OutcomeKind.COMPLETED: 0,
    OutcomeKind.ALREADY_EXISTS: 1,
    OutcomeKind.RETRY: 2,
    OutcomeKind.RETRY_AFTER_6H: 3,
    OutcomeKind.SPLIT_BATCH: 4,
    OutcomeKind.FAILED: 5,
    OutcomeKind.BLOCKED: 6,
    OutcomeKind.DEFERRED: 7,
}


@dataclass(slots=True)
class Verdict:
    """Classification of one row plus the Google code and message that produced it."""

    cls: Classification
    code: str | None = None
    message: str | None = None

    def worse_than(self, other: Verdict) -> bool:
        return _SEVERITY[self.cls.kind] > _SEVERITY[other.cls.kind]


OK = Verdict(Classification(OutcomeKind.COMPLETED))


@dataclass(slots=True)
class Reply:
    """One HTTP answer: status, decoded JSON body (``None`` if not JSON), request id, the
    ``Retry-After`` header in seconds."""

    status: int
    body: Any
    request_id: str | None
    retry_after_s: float | None


@dataclass(slots=True)
class ChunkResult:
    """Per-row verdicts of one request, plus the whole-request failure if there was one."""

    verdicts: list[Verdict]
    http_status: int
    request_id: str | None
    whole: Verdict | None = None


def verdict(status: int, code: str | None, message: str | None, delay: float | None = None) -> Verdict:
    return Verdict(classify(status, code, delay), code, message)


def _deferred(hold_s: float) -> Verdict:
    return Verdict(
        Classification(OutcomeKind.DEFERRED, ErrorCategory.RATE_LIMIT, max(0.0, hold_s)),
        "ACCOUNT_PAUSED",
        "not sent: Google asked to pause this account; no attempt spent",
    )


def _token_verdict(exc: OAuthError) -> Verdict:
    if isinstance(exc, OAuthConfigError):
        # Always an account problem (revoked grant, wrong client): never retried.
        return Verdict(Classification(OutcomeKind.BLOCKED, ErrorCategory.AUTH), exc.code, exc.message)
    return Verdict(
        Classification(OutcomeKind.RETRY, ErrorCategory.TRANSIENT),
        "TOKEN_ENDPOINT_UNAVAILABLE" if exc.code != "TIMEOUT" else "TIMEOUT",
        exc.message,
    )


class GoogleDestination(Destination):
    """Row validation, chunking, OAuth and transport errors shared by both Google destinations."""

    credentials_schema = GoogleCredentials
    credential_help = GOOGLE_CREDENTIAL_HELP
    secret_fields = GOOGLE_SECRET_FIELDS
    operations = frozenset({Operation.UPLOAD, Operation.TEST, Operation.ADJUST})
    max_batch = MAX_CHUNK_SIZE
    #: the deployment setting holding this destination's API root
    base_url_setting: ClassVar[str]

    def __init__(self, ctx: DestinationContext, *, tokens: TokenProvider | None = None) -> None:
        super().__init__(ctx)
        if not 1 <= ctx.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}]")
        self.chunk_size = ctx.chunk_size
        self._http = ctx.http
        self._timeout = ctx.timeout
        self.tokens = tokens or ctx.shared(
            "google_oauth",
            lambda: TokenProvider(ctx.http, token_url=ctx.settings.google_token_url, timeout=ctx.timeout),
        )

    @property
    def base_url(self) -> str:
        """The API root this destination sends to: the deployment's setting (never tenant data)."""
        return str(getattr(self.ctx.settings, self.base_url_setting)).rstrip("/")

    # -- the contract ---------------------------------------------------------------------

    @classmethod
    def normalize_credentials(cls, creds: Any) -> GoogleCredentials:
        assert isinstance(creds, GoogleCredentials)
        return creds.normalized()

    @classmethod
    def account_id(cls, creds: Any) -> str:
        return digits(creds.customer_id) or creds.customer_id

    @classmethod
    def classify(cls, http_status: int, error_code: str | None, retry_delay_s: float | None = None) -> Classification:
        return classify(http_status, error_code, retry_delay_s)

    # -- validation ---------------------------------------------------------------------

    def _check_credentials(self, creds: GoogleCredentials) -> Verdict | None:
        if digits(creds.customer_id) is None:
            return verdict(0, "INVALID_CUSTOMER_ID", "customer_id must be digits (dashes allowed)")
        if creds.login_customer_id and digits(creds.login_customer_id) is None:
            return verdict(0, "INVALID_LOGIN_CUSTOMER_ID", "login_customer_id must be digits")
        return None

    @staticmethod
    def _check_row(conv: Conversion, default_action: str) -> Verdict | None:
        """Reject rows Google would reject anyway, without spending a request on them."""
        action = (conv.target or default_action or "").strip()
        if not action:
            return verdict(0, "MISSING_CONVERSION_ACTION", "no conversion action in credentials or row")
        if action_id(action) is None:
            return verdict(0, "INVALID_CONVERSION_ACTION", "conversion action is not an id or resource name")
        if pick_click_id(conv) is None and not has_identifier(conv):
            return verdict(200, "MISSING_CLICK_ID", "row has no gclid, wbraid or gbraid, and no hashed identifier")
        if not conv.order_id or not conv.order_id.strip():
            return verdict(200, "MISSING_ORDER_ID", "order id is required for idempotent uploads")
        t = conv.conversion_time
        if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
            return verdict(200, "INVALID_CONVERSION_TIME", "conversion_time must be a timezone-aware datetime")
        if not conv.currency or not is_currency_code(conv.currency.upper()):
            return verdict(200, "INVALID_CURRENCY", "currency must be an ISO 4217 code")
        if conv.value_minor < 0:
            return verdict(200, "INVALID_VALUE", "value_minor must not be negative")
        return None

    # -- upload loop --------------------------------------------------------------------

    async def upload(
        self,
        creds: Any,
        conversions: Sequence[Conversion],
        *,
        before_request: BeforeRequest | None = None,
    ) -> UploadResult:
        """Upload ``conversions`` in requests of at most ``chunk_size`` rows, one after another.

        Every chunk gets its own outcome (a failed chunk does not touch the others). Rows
        that cannot be valid are answered without a request; if no row is valid, neither the
        API nor the token endpoint is called. ``before_request(n)`` is awaited before each API
        request (e.g. a token bucket; it may hold the rest back). Never raises for Google or
        network errors.
        """
        assert isinstance(creds, GoogleCredentials)
        result = UploadResult(destination=self.name, rows=[])
        verdicts: list[Verdict | None] = [None] * len(conversions)
        meta: list[tuple[str | None, int | None]] = [(None, None)] * len(conversions)

        cred_problem = self._check_credentials(creds)
        if cred_problem is not None:
            verdicts = [cred_problem] * len(conversions)
            self._note_whole(result, cred_problem)
        else:
            valid: list[int] = []
            for i, conv in enumerate(conversions):
                problem = self.refuse(conv) or self._check_row(conv, creds.conversion_action)
                if problem is None:
                    valid.append(i)
                else:
                    verdicts[i] = problem
            # Rows are grouped by chunk key (one conversion action per request for Data
            # Manager) while keeping input order inside each group.
            groups: dict[str, list[int]] = {}
            for i in valid:
                groups.setdefault(self.chunk_key(conversions[i], creds), []).append(i)
            chunks = [
                g[start : start + self.chunk_size]
                for g in groups.values()
                for start in range(0, len(g), self.chunk_size)
            ]
            stop: Verdict | None = None
            for idx in chunks:
                if stop is not None:
                    # The account is blocked (auth/config) or paused: do not send its other chunks.
                    for i in idx:
                        verdicts[i] = stop
                    continue
                cr = await self._gate_and_send(creds, [conversions[i] for i in idx], result, before_request)
                if isinstance(cr, Verdict):  # held back: this chunk and the rest are deferred
                    stop = cr
                    for i in idx:
                        verdicts[i] = stop
                    continue
                if cr.whole is not None and cr.whole.cls.kind is OutcomeKind.BLOCKED:
                    stop = cr.whole
                for pos, i in enumerate(idx):
                    verdicts[i] = cr.verdicts[pos]
                    meta[i] = (cr.request_id, cr.http_status)
                if cr.whole is not None:
                    self._note_whole(result, cr.whole)

        for i, conv in enumerate(conversions):
            v = verdicts[i] or OK
            rid, status = meta[i]
            result.rows.append(
                RowOutcome(
                    queue_id=conv.queue_id,
                    index=i,
                    kind=v.cls.kind,
                    error_code=v.code,
                    error_category=v.cls.category,
                    message=v.message,
                    retry_delay_s=v.cls.retry_delay_s,
                    request_id=rid,
                    http_status=status,
                )
            )
        return result

    @staticmethod
    def _note_whole(result: UploadResult, v: Verdict) -> None:
        if result.error_code is None and result.error_category is None:
            result.error_code = v.code
            result.error_category = v.cls.category
            result.message = v.message
            result.retry_delay_s = v.cls.retry_delay_s

    async def _gate_and_send(
        self,
        creds: GoogleCredentials,
        chunk: Sequence[Conversion],
        result: UploadResult,
        before_request: BeforeRequest | None,
    ) -> ChunkResult | Verdict:
        """The token, then ``before_request`` (the bucket), then the send; a :class:`Verdict`
        when the hook held the request back."""
        # The token first: its fetch must not stand between the bucket's slot (taken in
        # before_request) and the send, or a slow token endpoint would make the send late and
        # bunch it with the next one.
        token_problem = await self._token_problem(creds)
        if token_problem is not None:
            return ChunkResult([token_problem] * len(chunk), 0, None, token_problem)
        if before_request is not None and (hold_s := await before_request(len(chunk))) is not None:
            return _deferred(hold_s)
        return await self._send_chunk(creds, chunk, result, before_request)

    async def _send_chunk(
        self,
        creds: GoogleCredentials,
        chunk: Sequence[Conversion],
        result: UploadResult,
        before_request: BeforeRequest | None = None,
    ) -> ChunkResult:
        url, content, headers = self.build_request(creds, chunk)
        before_resend = None if before_request is None else (lambda: before_request(len(chunk)))
        reply = await self._post(creds, url, content, headers, result, before_resend)
        if isinstance(reply, Verdict):
            return ChunkResult([reply] * len(chunk), 0, None, reply)
        cr = self.parse_reply(reply, len(chunk))
        code = cr.whole.code if cr.whole is not None else None
        self.ctx.stats.inc(_RESPONSES, (self.name, str(reply.status), code or "none"))
        result.http_status = reply.status
        result.request_id = cr.request_id
        if cr.request_id:
            result.request_ids.append(cr.request_id)
        return cr

    async def _post(
        self,
        creds: GoogleCredentials,
        url: str,
        content: bytes,
        headers: dict[str, str],
        result: UploadResult,
        before_resend: Callable[[], Awaitable[float | None]] | None = None,
    ) -> Reply | Verdict:
        """POST with a Bearer token; on 401 refresh the token once and resend (a 401 means
        nothing was processed, so resending is safe). The resend is a request of its own:
        ``before_resend`` (the bucket) is awaited again, after the fresh token."""
        for attempt in range(2):
            try:
                token = await self.tokens.get_token(creds)
            except OAuthError as exc:  # OAuthConfigError included
                return _token_verdict(exc)
            if attempt == 1 and before_resend is not None:
                hold_s = await before_resend()
                if hold_s is not None:
                    return _deferred(hold_s)
            h = {**headers, "authorization": f"Bearer {token}", "content-type": "application/json"}
            result.requests_sent += 1
            started = time.perf_counter()
            try:
                resp = await self._http.post(url, content=content, headers=h, timeout=self._timeout)
            except httpx.TimeoutException as exc:
                return self._no_answer("TIMEOUT", f"no response within the timeout ({type(exc).__name__})")
            except httpx.ConnectError as exc:
                return self._no_answer("CONNECT_ERROR", f"connection failed ({type(exc).__name__})")
            except httpx.HTTPError as exc:
                return self._no_answer("NETWORK_ERROR", f"transport error ({type(exc).__name__})")
            finally:
                self.ctx.stats.observe(_DURATION, (self.name,), time.perf_counter() - started)
            if resp.status_code == 401 and attempt == 0:
                # answered, but resent with a fresh token: counted here, the resend's answer below
                self.ctx.stats.inc(_RESPONSES, (self.name, "401", "UNAUTHENTICATED"))
                self.tokens.invalidate(creds)
                continue
            try:
                body: Any = msgspec.json.decode(resp.content) if resp.content else {}
            except msgspec.DecodeError:
                body = None  # e.g. Google's HTML 404 for an unknown path
            retry_after = parse_duration((resp.headers.get("retry-after") or "") + "s")
            return Reply(resp.status_code, body, request_id_from_headers(resp.headers), retry_after)
        raise AssertionError("unreachable")

    async def _token_problem(self, creds: GoogleCredentials) -> Verdict | None:
        """Fetch (or reuse) the access token ahead of the send; the verdict when there is none."""
        try:
            await self.tokens.get_token(creds)
        except OAuthError as exc:  # OAuthConfigError included
            return _token_verdict(exc)
        return None

    # -- connection test ----------------------------------------------------------------

    async def test_connection(self, creds: Any, *, public_id: str) -> list[CheckStep]:
        """Refresh the token (a fresh one, not the cache's), then one validate-only upload of a
        test conversion: Google checks the account, the manager link, the conversion action and
        the allowlist without storing anything."""
        assert isinstance(creds, GoogleCredentials)
        fix = credentials_command(public_id, self.name)
        problem = self._check_credentials(creds)
        if problem is not None:
            return [CheckStep("credentials", False, f"{problem.message}: set them again with {fix}", problem.code)]
        self.tokens.invalidate(creds)
        try:
            await self.tokens.get_token(creds)
        except OAuthConfigError as exc:
            if exc.code == "invalid_grant":
                words = f"the refresh token is expired or revoked: store a new one with {fix}"
            elif exc.code in ("invalid_client", "unauthorized_client"):
                words = f"Google does not know this OAuth client id and secret: set the right ones with {fix}"
            else:
                words = f"Google refused the OAuth credentials ({exc.message}): set them again with {fix}"
            return [CheckStep("token", False, words, exc.code)]
        except OAuthError as exc:
            return [
                CheckStep(
                    "token", False, f"the token endpoint did not answer usefully ({exc.message}); try again", exc.code
                )
            ]
        steps = [CheckStep("token", True, "the refresh token was exchanged for an access token")]
        probe = Conversion(
            queue_id="connection-test",
            order_id="om_connection_test",
            conversion_time=datetime.now(UTC) - timedelta(hours=1),
            value_minor=100,
            currency="USD",
            gclid=TEST_CLICK_ID,
        )
        url, content, headers = self.build_request(creds, [probe])
        body = msgspec.json.decode(content)
        body["validateOnly"] = True  # Google validates and stores nothing
        scratch = UploadResult(destination=self.name, rows=[])
        reply = await self._post(creds, url, msgspec.json.encode(body), headers, scratch)
        if isinstance(reply, Verdict):
            steps.append(CheckStep("upload", False, f"{self.label} could not be reached: {reply.message}", reply.code))
            return steps
        v = self.parse_reply(reply, 1).verdicts[0]
        kind = v.cls.kind
        # a validate-only answer carries no results: 200 without a named error is a pass
        if kind in (OutcomeKind.COMPLETED, OutcomeKind.ALREADY_EXISTS) or (
            reply.status == 200 and v.code == "MISSING_RESULT"
        ):
            steps.append(
                CheckStep("upload", True, f"a validate-only upload was accepted by {self.label} (nothing was stored)")
            )
        elif kind is OutcomeKind.FAILED and v.cls.category is ErrorCategory.VALIDATION and v.code not in _ACTION:
            steps.append(
                CheckStep(
                    "upload",
                    True,
                    f"{self.label} accepted the account and conversion action and refused only the test "
                    f"conversion itself ({v.code}: it carries no real click), as expected; nothing was stored",
                    v.code,
                )
            )
        else:
            steps.append(CheckStep("upload", False, self._test_advice(v, creds, public_id), v.code))
        return steps

    def _test_advice(self, v: Verdict, creds: GoogleCredentials, public_id: str) -> str:
        """What a failed validate-only upload means, and what fixes it."""
        fix = credentials_command(public_id, self.name)
        said = f" (Google said: {v.message})" if v.message else ""
        hint = self.blocked_hint(v.code, public_id=public_id, site_destination=self.name, site_has_credentials=True)
        if hint is not None:
            return hint + said
        if v.code in _ACTION:
            return (
                f"conversion action {creds.conversion_action!r} does not exist in account {creds.customer_id}: "
                f"set the right one with {fix} --conversion-action ...{said}"
            )
        if v.code in _PERMISSION:
            return (
                f"these credentials cannot act on account {creds.customer_id}: when it is reached through a "
                f"manager account, set that account with {fix} --login-customer-id ...; otherwise check "
                f"--customer-id{said}"
            )
        if v.cls.kind is OutcomeKind.BLOCKED:
            return f"{self.label} refused this account or set-up ({v.code}): fix it with {fix}{said}"
        if v.cls.kind in (OutcomeKind.RETRY, OutcomeKind.RETRY_AFTER_6H, OutcomeKind.SPLIT_BATCH):
            return f"{self.label} is temporarily unavailable or rate limited ({v.code}); try again later{said}"
        return f"{self.label} refused the test upload ({v.code}){said}"

    def refuse(self, conv: Conversion) -> Verdict | None:
        """A row this destination cannot deliver at all (e.g. an adjustment it does not offer):
        its verdict, given without a request; ``None`` to send it."""
        return None

    def _no_answer(self, code: str, message: str) -> Verdict:
        """A request left but no HTTP answer came back: counted as status ``none``."""
        self.ctx.stats.inc(_RESPONSES, (self.name, "none", code))
        return verdict(0, code, message)

    def chunk_key(self, conv: Conversion, creds: GoogleCredentials) -> str:
        """Rows with different keys never share a request."""
        return ""

    @abc.abstractmethod
    def build_request(self, creds: GoogleCredentials, chunk: Sequence[Conversion]) -> tuple[str, bytes, dict[str, str]]:
        """URL, encoded JSON body and extra headers for one chunk."""

    @abc.abstractmethod
    def parse_reply(self, reply: Reply, n: int) -> ChunkResult:
        """Per-row verdicts from one HTTP reply."""
