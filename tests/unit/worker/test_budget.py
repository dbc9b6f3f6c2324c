"""The worker's CPU budget and the weights of sampled exchanges."""

from __future__ import annotations

from collections import Counter

import pytest

from modeltap.config import ModelTapConfig
from modeltap.worker.budget import MAX_PAYLOAD_STRIDE, MIN_RATE_PER_S, WINDOW_S, CpuBudget
from modeltap.worker.tap import Tap


class FakeClocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def spend(self, wall_s: float, cpu_s: float) -> None:
        self.wall += wall_s
        self.cpu += cpu_s


def _budget(share: float | None, clocks: FakeClocks) -> CpuBudget:
    return CpuBudget(share, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)


def _work(budget: CpuBudget, clocks: FakeClocks, wall_s: float, cpu_s: float, rate: float = 5000.0) -> None:
    """The worker spends `cpu_s` on `rate` exchanges per second while `wall_s` passes."""
    started = budget.measure()
    clocks.spend(wall_s, cpu_s)
    budget.charge(started, round(rate * wall_s))


def test_stride_doubles_per_window_over_budget_and_halves_back() -> None:
    clocks = FakeClocks()
    budget = _budget(0.05, clocks)
    stride = 1
    for expected in (2, 4, 8):
        _work(budget, clocks, WINDOW_S, 0.06 * WINDOW_S)  # 6 % of a core: just over a 5 % budget
        stride = budget.next_stride(stride)
        assert stride == expected
        assert budget.last_share == pytest.approx(0.06)
    _work(budget, clocks, WINDOW_S, 0.04 * WINDOW_S)  # between budget/3 and budget: hold
    assert budget.next_stride(stride) == 8
    for expected in (4, 2, 1, 1):
        _work(budget, clocks, WINDOW_S, 0.001)
        stride = budget.next_stride(stride)
        assert stride == expected


@pytest.mark.parametrize(
    ("share", "expected"),
    [(0.051, 2), (0.1, 2), (0.101, 4), (0.2, 4), (0.34, 8), (0.4, 8), (0.41, 16), (5.0, 128)],
)
def test_far_over_budget_the_stride_jumps_by_how_many_times_over_it_is(share: float, expected: int) -> None:
    clocks = FakeClocks()
    budget = _budget(0.05, clocks)
    _work(budget, clocks, WINDOW_S, share * WINDOW_S)
    assert budget.next_stride(1) == expected


def test_a_jump_never_takes_the_share_below_half_the_budget() -> None:
    """The worker's cost per second: a floor for every exchange, plus decoding 1 payload in
    `stride`. However far over the budget a burst starts, the stride settles where the share is
    between half the budget and the budget (never halved back: that needs a third), in a few
    windows."""
    floor_s, payload_s, rate = 2e-6, 40e-6, 20_000.0  # 4 % for the floor, 80 % for every payload

    def share(stride: int) -> float:
        return rate * (floor_s + payload_s / stride)

    clocks = FakeClocks()
    budget = _budget(0.05, clocks)
    stride, seen = 1, []
    for _ in range(8):
        _work(budget, clocks, WINDOW_S, share(stride) * WINDOW_S, rate=rate)
        stride = budget.next_stride(stride)
        seen.append(stride)
    assert seen[:3] == [32, 64, 128]  # 0.84 is 16.8 budgets; then 0.065 and 0.0525
    assert seen[3:] == [128] * 5
    assert 0.025 <= share(128) <= 0.05


def test_light_traffic_never_samples() -> None:
    clocks = FakeClocks()
    budget = _budget(0.05, clocks)
    _work(budget, clocks, WINDOW_S, 0.5 * WINDOW_S, rate=MIN_RATE_PER_S / 2)  # costly, but few exchanges
    assert budget.next_stride(1) == 1


def test_short_bursts_do_not_change_the_stride() -> None:
    clocks = FakeClocks()
    budget = _budget(0.05, clocks)
    _work(budget, clocks, WINDOW_S / 2, WINDOW_S / 2)  # 100 % of a core, but for half a window
    assert budget.next_stride(1) == 1


def test_stride_is_capped_and_no_budget_means_no_sampling() -> None:
    clocks = FakeClocks()
    budget = _budget(0.05, clocks)
    _work(budget, clocks, WINDOW_S, WINDOW_S)
    assert budget.next_stride(MAX_PAYLOAD_STRIDE) == MAX_PAYLOAD_STRIDE
    _work(budget, clocks, WINDOW_S, WINDOW_S)  # 20 budgets: 64 << 5, but no more than the cap
    assert budget.next_stride(64) == MAX_PAYLOAD_STRIDE
    for off in (None, 0.0):
        unlimited = _budget(off, clocks)
        _work(unlimited, clocks, WINDOW_S, WINDOW_S)
        assert unlimited.next_stride(8) == 1


async def _app(scope: object, receive: object, send: object) -> None:  # never called here
    raise AssertionError


@pytest.mark.parametrize(("stride", "payload_stride"), [(1, 4), (2, 1), (2, 8)])
def test_admission_weights_are_unbiased(stride: int, payload_stride: int) -> None:
    tap = Tap(_app, ModelTapConfig(monitor="inline"))
    tap.sampling.stride, tap.sampling.payload_stride = stride, payload_stride
    outcomes = Counter(tap.sampling.admit() for _ in range(1024 * 16))
    captured = sum(n for (weight, _), n in outcomes.items() if weight)
    with_payload = sum(n for (_, payload), n in outcomes.items() if payload)
    # Every admitted exchange stands for `stride` exchanges; every payload for stride*payload_stride.
    assert captured * stride == 1024 * 16
    assert with_payload * stride * payload_stride == 1024 * 16
    assert set(outcomes) <= {(0, 0), (stride, 0), (stride, stride * payload_stride)}


def test_payload_sampling_keeps_counts_exact_and_feature_counts_weighted() -> None:
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from modeltap import ModelTapMiddleware
    from modeltap.export.status_json import status_document

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"predictions": [sum(row) for row in body["instances"]]})

    middleware = ModelTapMiddleware(
        Starlette(routes=[Route("/predict", predict, methods=["POST"])]),
        model_name="m",
        worker_cpu_budget=0,
        monitor="inline",
    )

    async def drive() -> None:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.post("/predict", json={"instances": [[1.0, 2.0]]})  # starts the tap
            assert middleware.tap.flush(5.0)
            # As the CPU budget would set it; a budget whose clock never moves keeps it there.
            middleware.tap._budget = CpuBudget(0.05, clock=lambda: 0.0, cpu_clock=lambda: 0.0)
            middleware.tap.sampling.payload_stride = 4
            for i in range(40):
                response = await client.post("/predict", json={"instances": [[float(i), 2.0]]})
                assert response.status_code == 200

    try:
        asyncio.run(drive())
        assert middleware.tap.flush(5.0)
        document = status_document(middleware.tap.latest_snapshot(), "m")
        assert document["requests"]["total"] == 41  # timing and counts: every exchange
        (model,) = document["models"]
        f0 = next(f for f in model["features"] if f["name"] == "f0")
        assert f0["count"] == 1 + 10 * 4  # payloads: 1 in 4, each standing for 4
        assert document["monitoring"]["payload_sampling_stride"] == 4
    finally:
        middleware.tap.shutdown()
