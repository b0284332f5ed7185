"""``opsmantik emulator``: serve the Google emulator with uvicorn (default 127.0.0.1:8790).

The main CLI wires ``add_arguments`` / ``run``; ``python -m opsmantik_stream.emulator`` works too.
"""

from __future__ import annotations

import argparse

from .state import AccountRate, EmulatorConfig

__all__ = ["add_arguments", "build_config", "main", "run"]

DEFAULT_PORT = 8790


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _manager_link(value: str) -> tuple[str, list[str]]:
    customer, sep, logins = value.partition("=")
    if not sep or not customer.strip().isdigit():
        raise argparse.ArgumentTypeError("expected CUSTOMER=LOGIN[,LOGIN...]")
    return customer.strip(), _csv(logins)


def _account_rate(value: str) -> tuple[str, AccountRate]:
    account, sep, spec = value.partition("=")
    rps_s, _, cpm_s = spec.partition(":")
    try:
        rps = int(rps_s) if rps_s else None
        cpm = int(cpm_s) if cpm_s else None
    except ValueError:
        raise argparse.ArgumentTypeError("expected ACCOUNT=RPS[:CPM]") from None
    if not sep or not account.strip():
        raise argparse.ArgumentTypeError("expected ACCOUNT=RPS[:CPM]")
    return account.strip(), AccountRate(rps=rps, cpm=cpm)


def _throttle(value: str) -> tuple[str, float]:
    account, sep, seconds = value.partition("=")
    try:
        delay = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError("expected ACCOUNT=SECONDS") from None
    if not sep or not account.strip() or delay <= 0:
        raise argparse.ArgumentTypeError("expected ACCOUNT=SECONDS")
    return account.strip(), delay


def _rate(value: str) -> float:
    f = float(value)
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return f


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every emulator knob to ``parser`` (each is also settable via POST /_emulator/config)."""
    d = EmulatorConfig()
    srv = parser.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s; keep it local)")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s; 0 = any free)")
    srv.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level; access logging is always off (default: %(default)s)",
    )
    srv.add_argument("--seed", type=int, default=d.seed, help="seed for failure injection, request/job ids and tokens")

    faults = parser.add_argument_group("latency and faults")
    faults.add_argument(
        "--latency-ms",
        type=float,
        default=d.latency_ms,
        help="delay added to every API response, applied after the request was processed (so a client "
        "timeout leaves an accepted but unanswered upload) (default: %(default)s)",
    )
    faults.add_argument(
        "--latency-jitter-ms",
        type=float,
        default=d.latency_jitter_ms,
        help="extra uniform random delay, 0..N ms",
    )
    faults.add_argument(
        "--failure-rate",
        type=_rate,
        default=d.failure_rate,
        help="fraction (0..1) of API requests answered with --failure-status (default: %(default)s)",
    )
    faults.add_argument(
        "--failure-status",
        type=int,
        choices=[500, 503, 504],
        default=d.failure_status,
        help="status of injected failures: 500 INTERNAL, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED",
    )
    faults.add_argument(
        "--row-failure-rate",
        type=_rate,
        default=d.row_failure_rate,
        help="fraction of Google Ads rows failed with internalError TRANSIENT_ERROR (default: %(default)s)",
    )
    faults.add_argument("--outage", action="store_true", help="answer every API request with 503 UNAVAILABLE")
    faults.add_argument("--token-outage", action="store_true", help="answer the token endpoint with 503")

    quota = parser.add_argument_group("quotas and limits")
    quota.add_argument(
        "--rate-rps",
        type=int,
        default=None,
        help="requests per 1-second window per account before 429 RESOURCE_TEMPORARILY_EXHAUSTED (default: unlimited)",
    )
    quota.add_argument(
        "--rate-cpm",
        type=int,
        default=None,
        help="conversions per sliding 60 s per account before 429 (default: unlimited)",
    )
    quota.add_argument(
        "--account-rate",
        type=_account_rate,
        action="append",
        default=[],
        metavar="ACCOUNT=RPS[:CPM]",
        help="per-account override of --rate-rps/--rate-cpm (repeatable)",
    )
    quota.add_argument(
        "--throttle",
        type=_throttle,
        action="append",
        default=[],
        metavar="ACCOUNT=SECONDS",
        help="answer every API request for ACCOUNT with 429 and this retry delay (repeatable)",
    )
    quota.add_argument(
        "--daily-ops-limit",
        type=int,
        default=None,
        help="requests per account per UTC day before 429 RESOURCE_EXHAUSTED with an hours-long retryDelay",
    )
    quota.add_argument(
        "--max-conversions",
        type=int,
        default=d.max_conversions,
        help="conversions/events per request before TOO_MANY_CONVERSIONS_IN_REQUEST / TOO_MANY_EVENTS "
        "(default: %(default)s)",
    )
    quota.add_argument(
        "--api-versions",
        type=_csv,
        default=d.api_versions,
        help="live Google Ads API versions, comma separated (default: %(default)s)",
    )
    quota.add_argument(
        "--retired-versions",
        type=_csv,
        default=d.retired_versions,
        help="sunset versions answered with 400 UNSUPPORTED_VERSION; other unknown versions get an HTML 404 "
        "(default: %(default)s)",
    )

    auth = parser.add_argument_group("OAuth and accounts")
    auth.add_argument("--token-ttl", type=int, default=d.token_ttl_s, help="access token expires_in seconds")
    auth.add_argument("--client-id", default=None, help="require this OAuth client id (else any is accepted)")
    auth.add_argument("--client-secret", default=None, help="require this OAuth client secret (else any)")
    auth.add_argument(
        "--refresh-token",
        action="append",
        default=[],
        help="accept only these refresh tokens; others answer invalid_grant (repeatable; default: any)",
    )
    auth.add_argument(
        "--invalid-grant-token",
        action="append",
        default=[],
        help="refresh token that answers 400 invalid_grant, as if revoked (repeatable)",
    )
    auth.add_argument(
        "--ads-only-refresh-token",
        action="append",
        default=[],
        help="refresh token whose access tokens lack the datamanager scope (Data Manager 403; repeatable)",
    )
    auth.add_argument(
        "--not-allowlisted",
        action="append",
        default=[],
        metavar="CUSTOMER",
        help="customer id not allowlisted for Google Ads click-conversion upload: "
        "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE (repeatable)",
    )
    auth.add_argument(
        "--not-allowlisted-mode",
        choices=["request", "row"],
        default=d.not_allowlisted_mode,
        help="answer not-allowlisted customers with a whole-request 403 or per row in partial failure",
    )
    auth.add_argument(
        "--conversion-action",
        action="append",
        default=[],
        metavar="ID",
        help="conversion action ids that exist; others answer NO_CONVERSION_ACTION_FOUND / "
        "INVALID_CONVERSION_ACTION_ID (repeatable; default: all exist)",
    )
    auth.add_argument(
        "--manager-link",
        type=_manager_link,
        action="append",
        default=[],
        metavar="CUSTOMER=LOGIN[,LOGIN]",
        help="manager ids allowed as login-customer-id / loginAccount for CUSTOMER; others get 403 "
        "USER_PERMISSION_DENIED (repeatable; unlisted customers accept any)",
    )
    auth.add_argument(
        "--ec-leads-disabled",
        action="append",
        default=[],
        metavar="CUSTOMER",
        help="customer id without enhanced conversions for leads: identifier-only conversions answer "
        "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS (repeatable)",
    )
    auth.add_argument(
        "--data-terms-not-accepted",
        action="append",
        default=[],
        metavar="CUSTOMER",
        help="customer id that has not accepted the customer data terms: conversions with user identifiers "
        "answer CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS (repeatable)",
    )
    auth.add_argument(
        "--adjustment-min-age-s",
        type=float,
        default=d.adjustment_min_age_s,
        help="an adjustment of a conversion younger than this answers TOO_RECENT_CONVERSION "
        "(Google: 24 h; default: %(default)s)",
    )
    auth.add_argument(
        "--dm-processing-s",
        type=float,
        default=d.dm_processing_s,
        help="seconds a Data Manager requestStatus stays PROCESSING (default: %(default)s)",
    )


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """EmulatorConfig from parsed arguments."""
    return EmulatorConfig(
        seed=args.seed,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        failure_rate=args.failure_rate,
        failure_status=args.failure_status,
        row_failure_rate=args.row_failure_rate,
        outage=args.outage,
        token_outage=args.token_outage,
        rate_rps=args.rate_rps,
        rate_cpm=args.rate_cpm,
        account_rates=dict(args.account_rate),
        throttled_accounts=dict(args.throttle),
        daily_ops_limit=args.daily_ops_limit,
        max_conversions=args.max_conversions,
        api_versions=args.api_versions,
        retired_versions=args.retired_versions,
        token_ttl_s=args.token_ttl,
        client_id=args.client_id,
        client_secret=args.client_secret,
        refresh_tokens=args.refresh_token,
        invalid_grant_tokens=args.invalid_grant_token,
        ads_only_refresh_tokens=args.ads_only_refresh_token,
        not_allowlisted=args.not_allowlisted,
        not_allowlisted_mode=args.not_allowlisted_mode,
        conversion_actions=args.conversion_action,
        manager_links=dict(args.manager_link),
        dm_processing_s=args.dm_processing_s,
        ec_leads_disabled=args.ec_leads_disabled,
        data_terms_not_accepted=args.data_terms_not_accepted,
        adjustment_min_age_s=args.adjustment_min_age_s,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Returns the process exit code."""
    import uvicorn

    from .app import create_app

    app = create_app(build_config(args))
    print(
        f"opsmantik emulator on http://{args.host}:{args.port} "
        f"(token: /token, Ads: /{{v}}/customers/{{id}}:uploadClickConversions|uploadConversionAdjustments, "
        f"Data Manager: /v1/events:ingest, control: /_emulator/state)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m opsmantik_stream.emulator``)."""
    parser = argparse.ArgumentParser(
        prog="opsmantik emulator",
        description="Google Ads API / Data Manager API / OAuth emulator for tests and benchmarks. "
        "Control API: GET /_emulator/state, GET|POST /_emulator/config, POST /_emulator/reset.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
