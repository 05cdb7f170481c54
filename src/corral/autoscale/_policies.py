"""The pool policies: each turns an observation into a recommended pool size.

``fixed`` holds the pool at its size. ``reactive`` follows utilisation and queue depth
as the usual queue-driven autoscalers do (KEDA feeding Kubernetes' HPA). ``predictive``
measures arrival and completion rates over rolling windows, forecasts the arrival rate
with Holt's linear trend, and sizes the pool for the work that will be there once a new
instance is ready.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from corral.autoscale._model import Inputs, Observation, Recommendation, Settings

__all__ = ["Fixed", "Policy", "Predictive", "Reactive", "make_policy"]


class Policy(Protocol):
    def recommend(self, observation: Observation) -> Recommendation: ...


class Fixed:
    def __init__(self, settings: Settings) -> None:
        self.size = settings.max

    def recommend(self, observation: Observation) -> Recommendation:
        return Recommendation(self.size, f"fixed pool of {self.size}", {"policy": "fixed"})


def _demand(observation: Observation) -> int:
    """Instances the work in hand needs now: one per running or queued item."""
    return observation.count("busy") + observation.queued


class Reactive:
    """Grow when utilisation passes ``scaleUp``, shrink when it falls under ``scaleDown``,
    to ``ceil(demand / target)`` where demand is the busy instances plus the queue.

    A step grows the pool by at most ``max(4, size)`` (doubling, as HPA's default
    scale-up rule), so one noisy sample cannot start a whole fleet.
    """

    min_step = 4

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def recommend(self, observation: Observation) -> Recommendation:
        s, size, demand = self.settings, observation.size, _demand(observation)
        utilisation = demand / size if size else (math.inf if demand else 0.0)
        wanted = math.ceil(demand / s.target)
        inputs: Inputs = {"policy": "reactive", "utilisation": round(min(utilisation, 1e9), 4)}
        if utilisation > s.scale_up:
            step = min(wanted, size + max(self.min_step, size))
            return Recommendation(
                max(step, size), f"utilisation {utilisation:.2f} > {s.scale_up:g}", inputs
            )
        if utilisation < s.scale_down:
            return Recommendation(
                wanted, f"utilisation {utilisation:.2f} < {s.scale_down:g}", inputs
            )
        return Recommendation(size, f"utilisation {utilisation:.2f} within bounds", inputs)


class Predictive:
    """Size the pool for the arrival rate forecast one start-up time ahead.

    The arrival rate is measured over the last ``window`` seconds and over the window
    before it. Their difference is the trend, trusted only when it is larger than
    Poisson noise (two standard deviations of the difference of the two counts); the
    smoothed level (an exponential average of the window's rate) is carried along
    that slope ``lead`` seconds ahead: how long instances have taken to start, plus
    half a window (the window's rate lags a rising rate by that much). A tick with
    more arrivals than the window's rate explains (three deviations above it) is a
    burst: the forecast is then at least that tick's own rate.

    The pool is sized for ``min(rate x service, work in hand + rate x start)`` busy
    instances at the target utilisation (Little's law for a steady stream, but never
    more than there will be items for by the time new instances are ready) and never
    below the work in hand (one instance per running or queued item). The service
    time is the mean of the last runs' durations.
    """

    smoothing = 0.2  # the level's exponential average, per tick
    default_service = 60.0  # seconds, until a run has been seen to end
    service_runs = 200  # the mean service time is over this many last runs

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ticks: deque[tuple[float, int, int]] = deque()  # (time, arrivals, completions)
        #: The last runs' durations: a window of a few minutes holds too few runs for a
        #: steady mean when durations are heavy-tailed.
        self._durations: deque[float] = deque(maxlen=self.service_runs)
        self._service = self.default_service
        self._start = settings.startup  # until an instance has been seen to start
        self._level: float | None = None
        self._last: float | None = None
        self._first: float | None = None

    def _remember(self, o: Observation) -> None:
        self._ticks.append((o.now, o.arrivals, o.completions))
        while self._ticks and self._ticks[0][0] <= o.now - 2 * self.settings.window:
            self._ticks.popleft()
        self._durations.extend(o.durations)
        if self._durations:
            self._service = sum(self._durations) / len(self._durations)
        for start in o.starts:
            self._start += 0.3 * (start - self._start)

    def _counts(self, now: float) -> tuple[int, int, int]:
        """Arrivals in the last window, in the window before, completions in the last."""
        cut = now - self.settings.window
        last = sum(a for t, a, _ in self._ticks if t > cut)
        before = sum(a for t, a, _ in self._ticks if t <= cut)
        done = sum(c for t, _, c in self._ticks if t > cut)
        return last, before, done

    def recommend(self, observation: Observation) -> Recommendation:
        o = observation
        first = self._first = o.now if self._first is None else self._first
        dt = o.now - self._last if self._last is not None else 0.0
        self._last = o.now
        self._remember(o)
        window = self.settings.window
        span = max(min(window, o.now - first), dt, 1.0)
        last, before, done = self._counts(o.now)
        rate = last / span
        self._level = (
            rate if self._level is None else (self._level + self.smoothing * (rate - self._level))
        )
        slope = 0.0
        if o.now - first >= 2 * window and abs(last - before) > 2 * math.sqrt(last + before + 1):
            slope = (last - before) / window / window
        lead = self._start + span / 2
        forecast = max(max(self._level, rate) + slope * lead, 0.0)
        expected = (last - o.arrivals) / span * dt
        burst = dt > 0 and o.arrivals > expected + 3 * math.sqrt(expected) + 2
        if burst:
            forecast = max(forecast, o.arrivals / dt)
        in_hand = _demand(o)
        steady = min(forecast * self._service, in_hand + forecast * self._start)
        size = max(math.ceil(steady / self.settings.target - 1e-9), in_hand)
        inputs: Inputs = {
            "policy": "predictive",
            "arrival_rate": round(rate, 6),
            "previous_rate": round(before / window, 6),
            "completion_rate": round(done / span, 6),
            "level": round(self._level, 6),
            "slope": round(slope, 9),
            "forecast_rate": round(forecast, 6),
            "service_seconds": round(self._service, 3),
            "start_seconds": round(self._start, 3),
            "burst": burst,
        }
        reason = (
            f"forecast {forecast * 60:.2f}/min x {self._service:.0f}s service"
            f"{' (burst)' if burst else ''}: {steady:.1f} busy at {self.settings.target:g}"
        )
        return Recommendation(size, reason, inputs)


def make_policy(settings: Settings) -> Policy:
    if settings.policy == "fixed":
        return Fixed(settings)
    if settings.policy == "predictive":
        return Predictive(settings)
    return Reactive(settings)
