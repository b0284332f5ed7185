"""The memoised functions of the ingest path, with their bounds, in one list (issue 18).

Every bounded in-memory structure states its bound beside its definition (a named constant
or a setting; docs/soak.md has the whole table). The memos are module-level
``functools.lru_cache`` functions, so each process that imports them has its own copy: the
gateway uses the address and routing memos, a partition the attribution and session-id
ones. ``lru_report()`` is what ``/metrics`` and the soak read in each process.
"""

from __future__ import annotations

import gc
import os
from typing import Any

__all__ = ["GC_YOUNG_THRESHOLD", "lru_caches", "lru_report", "resident_bytes", "settle_heap"]


# Net allocations of tracked objects (tuples, lists, dicts) between two young-generation
# collections in a gateway or partition (Python's default: 700). An ingest batch keeps a few
# such objects per event alive until it commits (hundreds of events), so at 700 a collection
# ran every couple of hundred events, walked the batch's live objects and moved them to older
# generations, to be walked again there. At 5,000 most of them are gone before a collection
# comes: the collector's time over 28,000 batched events (prepare, encode, answer) fell from
# 30 to 9 ms, about 0.7 us per event of a partition's 15-20. A young collection then walks at
# most a few thousand objects (about half a millisecond), and memory waiting for it is a few MB.
GC_YOUNG_THRESHOLD = 5000


def settle_heap() -> None:
    """Take what is alive now (modules, the app, pools) out of the garbage collector's walks,
    and collect the young generation less often (``GC_YOUNG_THRESHOLD``).

    A full collection visits every tracked object, and a gateway or partition holds some
    100,000 after its imports (Ray, FastAPI, asyncpg): 50-70 ms on this machine, during which
    every request in flight in that process waits -- a p99 of its own. Called once, when a
    process is ready to serve; what is created afterwards is collected as usual."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def lru_caches() -> dict[str, Any]:
    """Name -> the ``lru_cache``-wrapped function."""
    from opsmantik_stream import routing
    from opsmantik_stream.ingest import admission, attribution, schema, scoring, store

    return {
        "attribution.url_params": attribution._url_params,
        "attribution.url_attribution": attribution._url_attribution,
        "attribution.host_of": attribution._host_of,
        "attribution.is_google": attribution._is_google,
        "attribution.social_platform": attribution._social_platform,
        "attribution.is_search": attribution._is_search,
        "attribution.parse_device": attribution._parse_device,
        "attribution.positions": attribution._positions,
        "admission.truncate_ip": admission._truncate,
        "admission.client_net": admission.client_net,
        "routing.partition_for": routing.partition_for,
        "store.derived_session_id": store._derived,
        "store.session_id": store._sid_uuid,
        "store.page_facts": store._page_memo,
        "store.event_rules": store._event_rules,
        "schema.consent_scopes": schema._scopes,
        "scoring.lead_scores": scoring._lead_scores,
    }


def lru_report() -> dict[str, tuple[int, int]]:
    """Name -> (entries now, bound) of every memo in this process."""
    out = {}
    for name, fn in lru_caches().items():
        info = fn.cache_info()
        out[name] = (int(info.currsize), int(info.maxsize))
    return out
