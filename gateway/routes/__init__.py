"""Every router of the gateway, one module per area (each area owns its routes)."""

from gateway.routes import (
    billing,
    calls,
    console,
    dead_letters,
    health,
    ingest,
    jobs,
    ops,
    privacy,
    sales,
    site_views,
    sites,
    uploads,
)

ROUTERS = [
    health.router,
    sites.router,
    site_views.router,
    ingest.router,
    calls.router,
    sales.router,
    uploads.router,
    billing.router,
    dead_letters.router,
    jobs.router,
    ops.router,
    privacy.router,
    console.router,
]

__all__ = ["ROUTERS"]
