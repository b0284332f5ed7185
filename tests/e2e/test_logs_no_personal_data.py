"""Logs carry no personal data — proven on the whole stack.

`opsmantik serve` runs at DEBUG log level (embedded PostgreSQL, Ray, the actors, the
gateway). The test sends every route of its OpenAPI description, with and without a valid
token, with inputs full of recognisable phone numbers, e-mail addresses, fingerprints,
tokens, secrets and full IP addresses (in paths, queries, bodies and headers), plus the
real flows that reach the actors (ingest, signed call events and consent, erase and export)
and their error paths: bad signatures, 4xx, and 5xx from partitions that were stopped.
Then it reads everything the gateway printed and every log file Ray wrote for the actors
(and PostgreSQL's log), and asserts none of those values appears.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsmantik_stream.leads.signing import sign
from tests.serving import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

TAG = secrets.token_hex(4)
PHONE = "+90 532 987 65 43"
# the bare forms are searched as numbers of their own: ten digits turn up by chance inside the
# longer numbers of tens of MB of logs (timestamps, sizes, ids)
PHONE_FORMS = ("5329876543", "05329876543", "905329876543", "532 987 65 43", "+905329876543")
EMAIL = f"leak.check.{TAG}@example.org"
FINGERPRINT = f"fp-leakcheck-{TAG}"
IPV4 = f"198.51.100.{int(TAG[:2], 16) % 200 + 20}"
IPV6 = f"2001:db8:{TAG}:12:3456:789a:bcde:f012"
CRON_SECRET = f"cron-secret-{TAG}-{secrets.token_hex(8)}"
INGEST_KEY = f"ingest-key-{TAG}"  # sent to /api/sync by a server that has no key
CLIENT_SECRET = f"client-secret-{TAG}"
REFRESH_TOKEN = f"1//refresh-{TAG}-{secrets.token_hex(6)}"
BOGUS_TOKEN = f"opsm_bogus{TAG}{secrets.token_hex(12)}"


def _run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsmantik_stream.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`opsmantik serve` at DEBUG, its output in a file, Ray's logs under its own folder."""
    port = free_port()
    # short paths outside tmp_path: unix sockets (PostgreSQL, Ray) have a length limit, and
    # pytest makes tmp_path 0700 while the embedded server runs as its own user
    root = Path(tempfile.mkdtemp(prefix="opsm-logs-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMANTIK_")}
    env.update(
        {
            "OPSMANTIK_DATA_DIR": str(root / "data"),
            "OPSMANTIK_PORT": str(port),
            "OPSMANTIK_PARTITIONS": "1",
            "OPSMANTIK_UPLOADERS": "1",
            "OPSMANTIK_LOG_LEVEL": "DEBUG",
            "OPSMANTIK_CRON_SECRET": CRON_SECRET,
            "OPSMANTIK_INGEST_TRUST_FORWARDED_FOR": "true",
            "RAY_TMPDIR": str(root / "ray"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    (root / "ray").mkdir()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsmantik_stream.cli", "serve"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"serve exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/health", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield {"base": base, "env": env, "log": log, "ray": root / "ray", "pg_log": root / "data/pg/log", "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _forwarded(n: int) -> dict[str, str]:
    # full client addresses as a reverse proxy reports them (the gateway trusts it here)
    return {"X-Forwarded-For": f"{IPV4 if n % 2 else IPV6}, 10.0.0.1"}


def _event(public_id: str, sid: str, **kw: Any) -> dict[str, Any]:
    return {
        "s": public_id,
        "u": f"https://shop.example.com/contact?email={EMAIL}&phone={PHONE}",
        "eid": str(uuid.uuid4()),
        "sid": sid,
        "ec": "conversion",
        "ea": "phone_call",
        "el": f"tel:{PHONE}",
        "r": f"https://www.google.com/search?q={EMAIL}",
        "consent": ["analytics", "marketing"],
        "meta": {"fp": FINGERPRINT, "email": EMAIL, "phone": PHONE, "gclid": f"gclid-{TAG}"},
        **kw,
    }


def _signed(public_id: str, secret: str, body: bytes, *, good: bool = True) -> dict[str, str]:
    ts = int(time.time())
    return {
        "X-Ops-Site-Id": public_id,
        "X-Ops-Ts": str(ts),
        "X-Ops-Signature": sign(secret, ts, body) if good else sign(f"wrong-{secret}", ts, body),
        "Content-Type": "application/json",
    }


def _fill(schema_params: list[dict[str, Any]], site: str, pii: str) -> dict[str, str]:
    out = {}
    for p in schema_params:
        if p.get("in") == "query":
            out[p["name"]] = site if p["name"] == "site" else pii
    return out


def _sweep_every_route(client: httpx.Client, spec: dict[str, Any], public_id: str, token: str) -> int:
    """Every route of the OpenAPI description, with PII in every input; returns answers >= 500."""
    body = {
        "site": public_id,
        "site_id": public_id,
        "note": f"call {PHONE} or mail {EMAIL}",
        "notes": f"{EMAIL} {PHONE}",
        "fingerprint": FINGERPRINT,
        "phone_number": PHONE,
        "email": EMAIL,
        "identifier_type": "email",
        "identifier_value": EMAIL,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "external_ref": EMAIL,
        "ip": IPV4,
    }
    server_errors = 0
    n = 0
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            for auth, pii in ((f"Bearer {token}", EMAIL), (f"Bearer {BOGUS_TOKEN}", PHONE), ("", FINGERPRINT)):
                n += 1
                url = re.sub(r"\{site\}", public_id, path)
                url = re.sub(r"\{[^}]+\}", pii.replace(" ", "%20").replace("+", "%2B"), url)
                headers = {**_forwarded(n), "X-Cron-Secret": f"wrong-{CRON_SECRET}"}
                if auth:
                    headers["Authorization"] = auth
                r = client.request(
                    method.upper(),
                    url,
                    params=_fill(params, public_id, pii),
                    json=body if method in ("post", "put", "patch") else None,
                    headers=headers,
                )
                server_errors += r.status_code >= 500
    return server_errors


def _stop_partitions(env: dict[str, str]) -> None:
    """Kill the partition actors for good (another driver, like `opsmantik status`)."""
    script = """
import ray
from actors.registry import REGISTRY_NAME
from actors.runtime import get_actor
from opsmantik_stream.cli.status import local_ray_address
from opsmantik_stream.config import load_settings
from opsmantik_stream.ray_runtime import init_ray, prepare_ray_environment
prepare_ray_environment()
s = load_settings()
init_ray(s, address=local_ray_address(s))
routing = ray.get(get_actor(REGISTRY_NAME, s.ray_namespace).routing.remote())
for name in routing["actors"]:
    ray.kill(get_actor(name, s.ray_namespace), no_restart=True)
print("killed", len(routing["actors"]))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "killed" in done.stdout, done.stdout + done.stderr


def test_no_personal_data_in_any_log(served: dict[str, Any]) -> None:
    env, base = served["env"], served["base"]
    site = json.loads(_run(env, "site", "create", "--name", "Leak", "--domain", "leak.example.com", "--json").stdout)
    public_id, secret = site["public_id"], site["secret"]
    token = json.loads(
        _run(
            env,
            "token",
            "create",
            "--user",
            f"owner-{TAG}@example.net",
            "--site",
            public_id,
            "--role",
            "owner",
            "--json",
        ).stdout
    )["token"]
    origin = {"Origin": "https://leak.example.com"}
    sid = str(uuid.uuid4())
    owner = {"Authorization": f"Bearer {token}"}

    with httpx.Client(base_url=base, timeout=30) as client:
        # ingest: accepted, batch, duplicate, and every refusal, all carrying the values
        first = _event(public_id, sid, ec="interaction", ea="view", el=EMAIL)
        assert client.post("/api/sync", json=first, headers={**origin, **_forwarded(1)}).status_code == 202
        assert client.post("/api/sync", json=first, headers={**origin, **_forwarded(2)}).status_code == 200
        batch = {"events": [_event(public_id, sid), _event(public_id, sid, ea="whatsapp", el=f"https://wa.me/{PHONE}")]}
        assert client.post("/api/sync", json=batch, headers={**origin, **_forwarded(3)}).status_code == 202
        refusals = [
            (f'{{"s": "{public_id}", "u": "{EMAIL}", "meta": {{"fp": "{FINGERPRINT}"'.encode(), origin),  # bad JSON
            (json.dumps({**_event(public_id, sid), "ev": {"phone": PHONE}}).encode(), origin),  # schema
            (json.dumps(_event(EMAIL, sid)).encode(), origin),  # unknown site
            (json.dumps(_event(public_id, sid)).encode(), {"Origin": f"https://{FINGERPRINT}.example.org"}),
            (json.dumps(_event(public_id, sid)).encode(), {"X-OpsMantik-Ingest-Key": INGEST_KEY}),
            (json.dumps(_event(public_id, sid, consent=["marketing"])).encode(), origin),
            (b"x" * (300 * 1024), origin),
        ]
        for n, (raw, headers) in enumerate(refusals):
            r = client.post(
                "/api/sync", content=raw, headers={**headers, **_forwarded(n), "Content-Type": "text/plain"}
            )
            assert 200 <= r.status_code < 500, r.text

        # signed call event (matches the session by fingerprint), replay, bad signature
        call = json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "site_id": public_id,
                "fingerprint": FINGERPRINT,
                "phone_number": PHONE,
                "url": f"https://shop.example.com/?email={EMAIL}",
            }
        ).encode()
        r = client.post("/api/call-event", content=call, headers={**_signed(public_id, secret, call), **_forwarded(4)})
        assert r.status_code == 200, r.text
        call_id = r.json()["call_id"]
        assert client.post("/api/call-event", content=call, headers=_signed(public_id, secret, call)).status_code == 200
        bad = client.post("/api/call-event", content=call, headers=_signed(public_id, secret, call, good=False))
        assert bad.status_code == 401
        # consent: signed update, bad signature
        consent = json.dumps(
            {
                "site_id": public_id,
                "identifier_type": "fingerprint",
                "identifier_value": FINGERPRINT,
                "scopes": ["analytics"],
            }
        ).encode()
        assert (
            client.post("/api/consent", content=consent, headers=_signed(public_id, secret, consent)).status_code == 200
        )
        bad = client.post("/api/consent", content=consent, headers=_signed(public_id, secret, consent, good=False))
        assert bad.status_code == 401

        # operators: a note with the number, a sale with the address, credentials with secrets
        r = client.post(
            f"/api/calls/{call_id}/actions",
            json={"action": "seal", "value_minor": 1000, "currency": "TRY", "note": PHONE},
            headers=owner,
        )
        assert r.status_code == 200, r.text
        r = client.post(
            "/api/sales",
            json={
                "site": public_id,
                "occurred_at": "2026-03-05T14:30:00+00:00",
                "amount_minor": 100,
                "notes": EMAIL,
                "external_ref": EMAIL,
            },
            headers=owner,
        )
        assert r.status_code in (200, 201), r.text
        creds = {
            "destination": "google_ads",
            "customer_id": "123-456-7890",
            "client_id": f"client-{TAG}",
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
            "conversion_action": "customers/1234567890/conversionActions/1",
        }
        assert client.put(f"/api/sites/{public_id}/credentials", json=creds, headers=owner).status_code < 500
        # cron: wrong and right secret
        assert client.post("/api/jobs/partitions", headers={"X-Cron-Secret": f"x{CRON_SECRET}"}).status_code == 403
        assert client.post("/api/jobs/partitions", headers={"X-Cron-Secret": CRON_SECRET}).status_code == 200

        # data-subject requests by every kind of identifier
        for kind, value in (("fingerprint", FINGERPRINT), ("phone", PHONE), ("email", EMAIL), ("session_id", sid)):
            params = {"site": public_id, "identifier_type": kind, "identifier_value": value}
            assert client.get("/api/privacy/export", params=params, headers=owner).status_code == 200
            r = client.post("/api/privacy/erase", json={"site": public_id, **params}, headers=owner)
            assert r.status_code == 200, r.text
            assert (
                client.get("/api/privacy/export", params=params, headers={"Authorization": BOGUS_TOKEN}).status_code
                == 401
            )

        spec = client.get("/openapi.json").json()
        assert len(spec["paths"]) >= 20
        server_errors = _sweep_every_route(client, spec, public_id, token)
        assert server_errors == 0

        # 5xx: the partitions are gone; ingest and call events answer 503 (and log it)
        _stop_partitions(env)
        for n in range(3):
            r = client.post("/api/sync", json=_event(public_id, sid), headers={**origin, **_forwarded(n)})
            assert r.status_code == 503, r.text
        call = json.dumps(
            {"event_id": str(uuid.uuid4()), "site_id": public_id, "fingerprint": FINGERPRINT, "phone_number": PHONE}
        ).encode()
        r = client.post("/api/call-event", content=call, headers=_signed(public_id, secret, call))
        assert r.status_code in (204, 503), r.text

    served["proc"].send_signal(signal.SIGINT)
    served["proc"].wait(timeout=90)

    # everything the gateway printed, and every file Ray wrote for the actors
    texts = {"serve output": served["log"].read_text(errors="replace")}
    # and PostgreSQL's own log, for good measure (statements that failed would show there)
    if served["pg_log"].is_file():
        texts["postgresql log"] = served["pg_log"].read_text(errors="replace")
    for path in served["ray"].rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", "") and path.stat().st_size < 50_000_000:
            texts[str(path.relative_to(served["ray"]))] = path.read_text(errors="replace")
    gateway = texts["serve output"]
    # the capture is real: DEBUG request lines of the gateway, and the actors' worker logs
    assert gateway.count('"msg":"request"') >= 100, gateway[-2000:]
    assert '"level":"DEBUG"' in gateway
    workers = [name for name in texts if "worker-" in name]
    assert workers, sorted(texts)[:20]
    values = {
        "phone": (*PHONE_FORMS, PHONE),
        "email": (EMAIL, EMAIL.replace("@", "%40")),
        "fingerprint": (FINGERPRINT,),
        "owner token": (token,),
        "bogus token": (BOGUS_TOKEN,),
        "site secret": (secret,),
        "cron secret": (CRON_SECRET,),
        "ingest key": (INGEST_KEY,),
        "client secret": (CLIENT_SECRET,),
        "refresh token": (REFRESH_TOKEN,),
        "IPv4 address": (IPV4,),
        "IPv6 address": (IPV6,),
    }
    leaks = []
    for source, text in texts.items():
        lowered = text.lower()
        for what, forms in values.items():
            for form in forms:
                if form.isdigit():
                    found = re.search(rf"(?<!\d){form}(?!\d)", text)
                    at = found.start() if found else -1
                else:
                    at = lowered.find(form.lower())
                if at >= 0:
                    leaks.append(f"{what} in {source}: ...{text[max(0, at - 150) : at + 80]}...")
    assert not leaks, "\n".join(leaks[:40])
