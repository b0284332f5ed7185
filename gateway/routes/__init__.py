"""Every router of the gateway, one module per area (each area owns its routes)."""

from gateway.routes import billing, calls, dead_letters, health, ingest, jobs, ops, privacy, sales, sites, uploads

ROUTERS = [
    health.router,
    sites.router,
    ingest.router,
    calls.router,
    sales.router,
    uploads.router,
    billing.router,
    dead_letters.router,
    jobs.router,
    ops.router,
    privacy.router,
]

__all__ = ["ROUTERS"]
