"""What each policy recommends, tick by tick, for observations written out by hand."""

from __future__ import annotations

from corral.autoscale import (
    Autoscaler,
    Instance,
    Limits,
    Observation,
    Settings,
    bound,
    removable,
)


def _pool(busy: int = 0, idle: int = 0, warming: int = 0) -> tuple[Instance, ...]:
    states = ["busy"] * busy + ["idle"] * idle + ["warming"] * warming
    return tuple(Instance(f"i{n}", s, float(n)) for n, s in enumerate(states))  # type: ignore[arg-type]


def test_fixed_holds_its_size_whatever_the_queue() -> None:
    scaler = Autoscaler(Settings.fixed(3))
    assert scaler.decide(Observation(now=0, queued=50)).add == 3
    decision = scaler.decide(Observation(now=15, queued=0, instances=_pool(idle=3)))
    assert (decision.desired, decision.add, decision.remove) == (3, 0, ())


def test_reactive_grows_past_scale_up_by_a_bounded_step() -> None:
    scaler = Autoscaler(Settings(min=0, max=100))
    # 4 busy of 4 and 40 queued: utilisation 11 > 0.7; ceil(44 / 0.6) = 74, but one step
    # grows the pool by at most max(4, size): to 8.
    decision = scaler.decide(Observation(now=0, queued=40, instances=_pool(busy=4)))
    assert (decision.desired, decision.add) == (8, 4)
    assert decision.inputs["utilisation"] == 11.0
    # Warming instances count: 8 in the pool for 44 items, the next step doubles again.
    again = scaler.decide(Observation(now=15, queued=40, instances=_pool(busy=4, warming=4)))
    assert again.desired == 16


def test_reactive_holds_between_the_thresholds() -> None:
    scaler = Autoscaler(Settings(min=0, max=10))
    decision = scaler.decide(Observation(now=0, queued=0, instances=_pool(busy=5, idle=5)))
    assert (decision.desired, decision.add, decision.remove) == (10, 0, ())
    assert "within bounds" in decision.reason


def test_reactive_shrinks_only_after_the_stabilisation_window() -> None:
    scaler = Autoscaler(Settings(min=1, max=10, stabilization=60))
    busy = scaler.decide(Observation(now=0, queued=0, instances=_pool(busy=6)))
    assert busy.desired == 10  # ceil(6 / 0.6)
    quiet = _pool(idle=6)
    held = scaler.decide(Observation(now=30, queued=0, instances=quiet))
    assert (held.desired, held.remove) == (6, ())
    assert "stabilisation" in held.reason
    gone = scaler.decide(Observation(now=61, queued=0, instances=quiet))
    assert gone.desired == 1
    assert gone.remove == ("i0", "i1", "i2", "i3", "i4")  # oldest first; min keeps one


def test_shrinking_never_takes_busy_or_warming_instances() -> None:
    instances = (
        Instance("old-busy", "busy", 0.0),
        Instance("warming", "warming", 1.0),
        Instance("idle-2", "idle", 2.0),
        Instance("idle-1", "idle", 1.5),
    )
    assert removable(instances, 10) == ("idle-1", "idle-2")
    assert removable(instances, 1) == ("idle-1",)
    scaler = Autoscaler(Settings(min=0, max=10, stabilization=0))
    crowd = (*instances, *(Instance(f"w{n}", "warming", 3.0) for n in range(4)))
    decision = scaler.decide(Observation(now=0, queued=0, instances=crowd))
    assert decision.desired == 2  # utilisation 1/8 < 0.2: ceil(1 / 0.6)
    assert decision.remove == ("idle-1", "idle-2")  # the pool stays at 6 until they end


def test_bounds_take_the_smallest_limit_and_the_budget_stops_growth() -> None:
    settings = Settings(min=2, max=20)
    assert bound(settings, Limits(), 0, 50) == 20
    assert bound(settings, Limits(cap=8, slots=12), 0, 50) == 8
    assert bound(settings, Limits(slots=1), 0, 50) == 1  # a limit below min wins
    assert bound(settings, Limits(), 5, 0) == 2
    assert bound(settings, Limits(budget_stop=True), 5, 50) == 5
    decision = Autoscaler(settings).decide(
        Observation(now=0, queued=30, instances=_pool(busy=5), limits=Limits(budget_stop=True))
    )
    assert decision.add == 0 and "bounded to 5" in decision.reason


def _steady(scaler: Autoscaler, per_tick: int, ticks: int, start: float = 0.0) -> None:
    for n in range(ticks):
        scaler.decide(
            Observation(
                now=start + 15 * n,
                queued=0,
                instances=_pool(busy=2, idle=8),
                arrivals=per_tick,
                completions=per_tick,
                durations=(60.0,) * per_tick,
            )
        )


def test_predictive_sizes_a_steady_stream_by_littles_law() -> None:
    scaler = Autoscaler(Settings(min=0, max=50, policy="predictive", stabilization=0))
    _steady(scaler, per_tick=1, ticks=40)  # 4 a minute, runs of a minute: 4 busy
    decision = scaler.decide(
        Observation(now=600, queued=0, instances=_pool(busy=2, idle=8), arrivals=1)
    )
    assert abs(decision.inputs["forecast_rate"] - 1 / 15) < 0.01  # type: ignore[operator]
    assert decision.desired == 7  # ceil(4 / 0.6)
    assert decision.inputs["burst"] is False


def test_predictive_grows_for_a_burst_before_the_queue_shows_it() -> None:
    settings = Settings(min=0, max=200, stabilization=0)
    predictive = Autoscaler(Settings(**{**settings.__dict__, "policy": "predictive"}))
    reactive = Autoscaler(settings)
    for scaler in (predictive, reactive):
        _steady(scaler, per_tick=0, ticks=10)
    # 30 arrivals in one tick; the pool has already taken them (no queue).
    burst = Observation(
        now=150, queued=0, instances=_pool(busy=12, idle=18), arrivals=30, durations=()
    )
    ahead = predictive.decide(burst)
    assert ahead.inputs["burst"] is True
    assert ahead.desired > 30 * 2  # sized for the arrival rate going on, not the queue
    assert reactive.decide(burst).desired == 30  # utilisation 0.4: within bounds


def test_predictive_follows_a_significant_trend_only() -> None:
    settings = Settings(min=0, max=500, policy="predictive", stabilization=0, window=300)
    rising = Autoscaler(settings)
    for n in range(60):  # the rate doubles every five minutes
        rising.decide(Observation(now=15 * n, queued=0, arrivals=2 ** (n // 20), durations=(60.0,)))
    last = rising.decide(Observation(now=900, queued=0, arrivals=4, durations=(60.0,)))
    assert last.inputs["slope"] > 0  # type: ignore[operator]
    assert last.inputs["forecast_rate"] > last.inputs["arrival_rate"]  # type: ignore[operator]


def test_the_same_observations_give_the_same_decisions() -> None:
    def run() -> list[tuple[int, tuple[str, ...], str]]:
        scaler = Autoscaler(Settings(min=1, max=40, policy="predictive"))
        out = []
        for n in range(50):
            queued = (n * 7) % 13
            decision = scaler.decide(
                Observation(
                    now=15.0 * n,
                    queued=queued,
                    instances=_pool(busy=n % 5, idle=n % 3),
                    arrivals=queued,
                    durations=(30.0 + n,),
                )
            )
            out.append((decision.desired, decision.remove, decision.reason))
        return out

    assert run() == run()


def test_predictive_leads_by_the_configured_startup_until_it_measures_starts() -> None:
    """``startup`` is the lead before any instance start is measured (always, for the
    scheduler's pool of slots): a longer start-up sizes the pool for more arrivals."""

    def size(startup: float, starts: tuple[float, ...] = ()) -> tuple[int, float]:
        settings = Settings(min=0, max=500, policy="predictive", window=300, startup=startup)
        scaler = Autoscaler(settings)
        decision = None
        for n in range(20):  # 2 arrivals every 15 s, runs of 600 s
            decision = scaler.decide(
                Observation(
                    now=15.0 * n,
                    queued=2,
                    instances=_pool(busy=2 * n),
                    arrivals=2,
                    durations=(600.0,),
                    starts=starts,
                )
            )
        assert decision is not None
        return decision.desired, float(decision.inputs["start_seconds"])  # type: ignore[arg-type]

    short, short_lead = size(startup=1)
    long, long_lead = size(startup=240)
    assert (short_lead, long_lead) == (1.0, 240.0)
    assert long > short
    # Measured starts replace the setting.
    _, measured = size(startup=240, starts=(5.0,))
    assert measured < 10
