"""The connection budget (issue 14): every pool sized from max_connections, resizes included."""

from __future__ import annotations

import pytest

from opsmantik_stream.budget import BudgetError, ServerLimits, plan_pools
from opsmantik_stream.config import load_settings

pytestmark = pytest.mark.unit

SETTINGS = load_settings(environ={})
DEFAULT_SERVER = ServerLimits(max_connections=100, server_reserved=3)


@pytest.mark.parametrize("max_connections", [40, 100, 200, 500])
@pytest.mark.parametrize("gateways", [1, 2])
def test_every_plan_fits_including_any_resize(max_connections: int, gateways: int) -> None:
    limits = ServerLimits(max_connections=max_connections, server_reserved=3)
    settings = SETTINGS.with_overrides(gateways=gateways)
    available = max_connections - 3 - settings.db_reserved_connections
    plans = []
    for partitions in range(1, 17):
        for uploaders in range(0, 17):
            try:
                plans.append(plan_pools(limits, partitions=partitions, uploaders=uploaders, settings=settings))
            except BudgetError:
                continue
    assert plans
    for plan in plans:
        assert plan.steady <= available
        assert plan.partition >= settings.partition_db_connections + 1
        assert plan.uploader >= settings.uploader_concurrency + 1
        assert plan.gateway >= 2 and plan.gateway_api >= 2
    # a resize runs two generations at once: any two plans of this budget fit together
    fixed = {p.fixed for p in plans}
    assert len(fixed) == 1, "the gateways' share must not depend on the number of actors"
    biggest = max(p.actors for p in plans)
    assert fixed.pop() + 2 * biggest <= available


def test_the_issue_case_fits_and_bigger_is_refused_with_the_numbers() -> None:
    # issue 14: 4 partitions and 4 uploaders used to ask for 112 connections of 100
    plan = plan_pools(DEFAULT_SERVER, partitions=4, uploaders=4, settings=SETTINGS)
    assert plan.fixed + 2 * plan.actors <= 100 - 3 - SETTINGS.db_reserved_connections
    with pytest.raises(BudgetError) as refused:
        plan_pools(DEFAULT_SERVER, partitions=8, uploaders=8, settings=SETTINGS)
    text = str(refused.value)
    assert "8 partition(s) and 8 uploader(s)" in text and "max_connections 100" in text


def test_a_large_server_gives_every_pool_what_it_wants() -> None:
    plan = plan_pools(ServerLimits(1000, 3), partitions=2, uploaders=2, settings=SETTINGS)
    assert plan.gateway == SETTINGS.db_pool_max
    assert plan.partition == SETTINGS.partition_db_connections + 2
    assert plan.uploader == SETTINGS.uploader_concurrency * 3


def test_a_share_of_a_server_and_reserved_slots_are_respected() -> None:
    shared = SETTINGS.with_overrides(db_max_connections=50, db_reserved_connections=10)
    plan = plan_pools(ServerLimits(50, 3), partitions=2, uploaders=1, settings=shared)
    assert plan.fixed + 2 * plan.actors <= 50 - 3 - 10
    with pytest.raises(BudgetError):
        plan_pools(ServerLimits(50, 3), partitions=6, uploaders=6, settings=shared)
