"""HTTP ceiling: a bare FastAPI endpoint that decodes the ingest body and answers 202.

Served like the gateway (``opsmantik serve``): one uvicorn process with uvloop and
httptools, no access log; with uvicorn's own protocol, as a bare FastAPI app gets it (the
gateway's one write per response, ``gateway/http_protocol.py``, is product work the ceiling
does not get). The body is decoded with msgspec into typed Structs of the same
shape and limits as ``POST /api/sync`` (one event or ``{"events": [...]}``), so the only
thing the real endpoint does on top is the product's own work: site lookup, origin and
rate-limit checks, the partition call and the PostgreSQL commit.

    python -m benchmarks.ceiling_app --port 18100
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import msgspec
from fastapi import FastAPI, Request
from starlette.responses import Response

Str = Annotated[str, msgspec.Meta(max_length=4096)]


class Event(msgspec.Struct, kw_only=True):
    s: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    u: Str | None = None
    url: Str | None = None
    eid: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    sid: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    ec: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    ea: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    el: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    ev: float | str | None = None
    r: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    consent: list[str] | str | None = None
    meta: dict[str, Any] | None = None


class Envelope(Event, kw_only=True):
    events: Annotated[list[Event], msgspec.Meta(min_length=1, max_length=100)] | None = None


_decoder = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/sync")
    async def sync(request: Request) -> Response:
        body = await request.body()
        try:
            env = _decoder.decode(body)
        except msgspec.DecodeError:
            return Response(b'{"ok":false,"error":"invalid_json"}', 400, media_type="application/json")
        n = len(env.events) if env.events is not None else 1
        answer: dict[str, Any] = {"ok": True, "status": "accepted", "received": n}
        return Response(_encoder.encode(answer), 202, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
