"""Rough sustained upload rate against the emulator versus the configured token bucket.

Starts an embedded PostgreSQL, a local Ray, the Google emulator on 127.0.0.1 (enforcing the
same requests/s in 1 s windows, so any excess shows up as a 429), N uploader actors and M sites
sharing one Google account with a budget of R requests/s; fills the queue with rows (one per
request with --chunk 1) and reports the emulator's per-second request counts.

    .venv/bin/python benchmarks/upload_rough.py --uploaders 1 --rps 20 --seconds 10
    .venv/bin/python benchmarks/upload_rough.py --uploaders 4 --rps 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from opsmantik_stream import tenancy
from opsmantik_stream.config import load_settings
from opsmantik_stream.db import EmbeddedPostgres, create_pool
from opsmantik_stream.migrate import apply_migrations
from opsmantik_stream.vault import generate_key
from tests.integration._uploader_support import Emu, add_rows, serve_emulator, set_creds


async def run(args: argparse.Namespace, emu_base: str, db_url: str, data_dir: Path) -> dict[str, object]:
    from actors.runtime import get_actor, start_stack, stop_stack

    settings = load_settings(
        environ={},
        database_url=db_url,
        data_dir=str(data_dir),
        vault_key=generate_key(),
        ray_namespace=f"bench-{uuid.uuid4().hex[:8]}",
        partitions=1,
        uploaders=args.uploaders,
        upload_chunk_size=args.chunk,
        upload_idle_poll_s=0.05,
        upload_bucket_margin_s=args.margin,
        uploader_concurrency=args.concurrency,
        upload_site_concurrency=args.concurrency,
        google_ads_base_url=emu_base,  # Google's endpoints are deployment settings
        google_token_url=f"{emu_base}/token",
    )
    conn = await asyncpg.connect(db_url)
    await apply_migrations(conn)
    await conn.close()
    pool = await create_pool(db_url, max_size=5)
    account = "5555555555"
    n_sites = max(1, args.uploaders)
    per_site = int(args.rps * args.seconds * args.chunk / n_sites) + 1
    for i in range(n_sites):
        async with pool.acquire() as c:
            site = await tenancy.create_site(c, name=f"bench {i}", domain=f"b{i}.example.com")
        await set_creds(
            pool,
            settings,
            site["site_id"],
            customer_id=account,
            requests_per_s=args.rps,
            conversions_per_min=1e7,
        )
        await add_rows(pool, site["site_id"], [f"Cj0K{j}" for j in range(per_site)])
    total = per_site * n_sites
    emu = Emu(emu_base)
    await emu.reset(account_rates={account: {"rps": int(args.rps)}})
    table = start_stack(settings, db_url, start_maintenance=False)
    uploaders = [get_actor(n, settings.ray_namespace) for n in table["uploaders"]]
    t0 = time.monotonic()
    await asyncio.gather(*(u.start.remote() for u in uploaders))
    while await pool.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status = 'COMPLETED'") < total:
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - t0
    await asyncio.gather(*(u.drain.remote() for u in uploaders))
    state = await emu.state()
    per_second = {int(k): v for k, v in state["requests_per_second"].get(account, {}).items()}
    secs = sorted(per_second)
    inner = [per_second[s] for s in secs[1:-1]] or list(per_second.values())  # drop partial edges
    stop_stack(settings.ray_namespace)
    await emu.aclose()
    await pool.close()
    sustained = sum(inner) / len(inner)
    return {
        "uploaders": args.uploaders,
        "sites": n_sites,
        "configured_rps": args.rps,
        "chunk": args.chunk,
        "margin_s": args.margin,
        "concurrency": args.concurrency,
        "rows": total,
        "elapsed_s": round(elapsed, 2),
        "sustained_rps": round(sustained, 2),
        "ratio_to_bucket": round(sustained / args.rps, 3),
        "max_rps_in_any_1s_window": max(per_second.values()),
        "responses_by_status": state["responses_by_status"],
        "per_second": [per_second[s] for s in secs],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uploaders", type=int, default=1)
    p.add_argument("--rps", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=2, help="uploader_concurrency and site lease limit")
    p.add_argument("--margin", type=float, default=0.05, help="upload_bucket_margin_s")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="opsm-bench-"))
    pg = EmbeddedPostgres(folder)
    url = pg.start()
    from opsmantik_stream.ray_runtime import init_ray, shutdown_ray

    init_ray(load_settings(environ={}, ray_num_cpus=4))
    try:
        with serve_emulator() as emu_base:
            print(json.dumps(asyncio.run(run(args, emu_base, url, folder / "data"))))
    finally:
        shutdown_ray()
        pg.stop()
        shutdown_ray()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
