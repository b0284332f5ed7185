"""``opsmantik serve``: the whole stack (embedded PostgreSQL, Ray, actors, gateway)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import CliError, settings_or_exit
from opsmantik_stream.db import resolve_database_url
from opsmantik_stream.migrate import MigrationError, apply_migrations

log = logging.getLogger("opsmantik.serve")

# How long an idle keep-alive connection stays open: longer than the idle timeout of the
# reverse proxies the docs show (nginx 60 s, Caddy 2 min), see _serve_http.
KEEP_ALIVE_S = 130


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="start the whole stack and serve HTTP (what `make run` runs)",
        description="Start PostgreSQL (embedded unless OPSMANTIK_DATABASE_URL is set), apply "
        "migrations, start Ray (local on 127.0.0.1 unless OPSMANTIK_RAY_ADDRESS is set) and the "
        "actors, then serve the gateway. Ctrl-C stops everything cleanly; data is kept.",
    )
    p.add_argument("--host", help="bind address (default OPSMANTIK_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default OPSMANTIK_PORT or 8000)")
    p.add_argument("--partitions", type=int, help="site partitions on first start (default 2)")
    p.add_argument("--uploaders", type=int, help="uploader actors on first start (default 2)")
    p.set_defaults(func=cmd_serve)


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn, progress=lambda m: print(m, file=sys.stderr))
    finally:
        await conn.close()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_or_exit(host=args.host, port=args.port, partitions=args.partitions, uploaders=args.uploaders)
    from gateway.logs import configure_logging

    configure_logging(settings.log_level)
    import os

    from opsmantik_stream.vault import load_or_create_key

    if settings.vault_key is None:
        # make sure the key exists; only the uploaders read it (actors.runtime.role_settings)
        load_or_create_key(settings)
    # keep a key given in the environment out of every process Ray starts from here
    os.environ.pop("OPSMANTIK_VAULT_KEY", None)

    print("starting PostgreSQL ...", file=sys.stderr, flush=True)
    try:
        url, embedded = resolve_database_url(settings)
    except Exception as exc:
        raise CliError(f"cannot start the embedded PostgreSQL: {exc}") from None
    try:
        try:
            asyncio.run(_migrate(url))
        except MigrationError as exc:
            raise CliError(f"migrations: {exc}") from None
        except (OSError, asyncpg.PostgresError) as exc:
            raise CliError(f"cannot connect to the database: {type(exc).__name__}: {exc}") from None

        print("starting Ray and the actors ...", file=sys.stderr, flush=True)
        from actors.runtime import start_stack
        from opsmantik_stream.ray_runtime import init_ray, shutdown_ray

        info = init_ray(settings)
        address_file = settings.data_path / "ray.address"
        if not settings.ray_address and info.get("address"):
            # lets `opsmantik status` / `scale` in another shell find this local cluster
            address_file.write_text(str(info["address"]) + "\n")
        try:
            table = start_stack(settings, url, start_uploaders=True)
            print(
                f"actors ready: {len(table['actors'])} partition(s), {len(table['uploaders'])} uploader(s), "
                f"routing v{table['version']}",
                file=sys.stderr,
                flush=True,
            )
            _serve_http(settings, url)
        finally:
            print("stopping Ray ...", file=sys.stderr, flush=True)
            address_file.unlink(missing_ok=True)
            shutdown_ray()
    finally:
        if embedded is not None:
            print("stopping PostgreSQL ...", file=sys.stderr, flush=True)
            embedded.stop()
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _serve_http(settings: Any, url: str) -> None:
    import uvicorn

    from gateway.app import create_app
    from gateway.http_protocol import OneSendHttpToolsProtocol

    app = create_app(settings=settings, db_url=url, ray_enabled=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with each response's head and body sent in one write
        http=OneSendHttpToolsProtocol,
        log_config=None,
        access_log=False,
        # the app applies OPSMANTIK_TRUSTED_PROXIES itself; uvicorn's default would believe
        # X-Forwarded-For from any local client
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # A reverse proxy keeps idle upstream connections and must be the one to close them:
        # when the server closes first (uvicorn's default is 5 s), a request the proxy sends
        # on the closing connection fails as a 502.
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    print(
        f"OpsMantik Stream serving on http://{settings.host}:{settings.port}  (docs: /docs, Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled once the server has shut down; the stack
        # is stopped by the caller either way, and a requested stop is a clean exit.
        pass
