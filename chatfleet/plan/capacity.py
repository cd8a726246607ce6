"""From one replica's capacity to the fleet: replicas at peak, accelerators, tokens, cost.

Simulating 100M users request by request is neither possible nor needed: requests to
different replicas only interact through the router, so a small simulated fleet at the
per-replica peak rate stands for the whole fleet, and the fleet is that rate scaled:

    peak rate     = users * messages per user per day / 86400 * peak-to-mean
    replicas      = ceil(peak rate / per-replica capacity at the SLOs)
    autoscaled    = sum over the hours of ceil(rate(hour) / capacity), on the diurnal curve
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chatfleet.plan.search import LoadPoint
from chatfleet.plan.traffic import SECONDS_PER_DAY, DiurnalCurve


@dataclass(frozen=True)
class Demand:
    users: float
    messages_per_user_day: float
    peak_to_mean: float

    @property
    def curve(self) -> DiurnalCurve:
        mean = self.users * self.messages_per_user_day / SECONDS_PER_DAY
        return DiurnalCurve(mean, self.peak_to_mean)


@dataclass(frozen=True)
class FleetPlan:
    mean_rate: float  # requests per second over the day
    peak_rate: float
    capacity_per_replica: float  # requests per second within the SLOs
    replicas: int  # at peak
    accelerators_per_replica: int
    price_per_hour: float  # per accelerator
    prompt_tokens_per_request: float  # history included (what the replicas compute or hit)
    output_tokens_per_request: float
    prefix_hit_rate: float  # prompt tokens served from the prefix cache, at capacity
    kv_cache_bytes_per_replica: float
    kv_cache_tokens_per_replica: int
    replica_hours_autoscaled: int  # over a day, following the diurnal curve hour by hour

    @property
    def accelerators(self) -> int:
        return self.replicas * self.accelerators_per_replica

    @property
    def peak_tokens_per_s(self) -> float:
        return self.peak_rate * (self.prompt_tokens_per_request + self.output_tokens_per_request)

    @property
    def peak_output_tokens_per_s(self) -> float:
        return self.peak_rate * self.output_tokens_per_request

    @property
    def tokens_per_day(self) -> float:
        per = self.prompt_tokens_per_request + self.output_tokens_per_request
        return self.mean_rate * SECONDS_PER_DAY * per

    @property
    def output_tokens_per_day(self) -> float:
        return self.mean_rate * SECONDS_PER_DAY * self.output_tokens_per_request

    @property
    def cost_per_day(self) -> float:
        """A fleet sized for the peak, all day."""
        return self.accelerators * self.price_per_hour * 24

    @property
    def cost_per_day_autoscaled(self) -> float:
        return self.replica_hours_autoscaled * self.accelerators_per_replica * self.price_per_hour

    def cost_per_million(self, tokens_per_day: float, autoscaled: bool = False) -> float:
        cost = self.cost_per_day_autoscaled if autoscaled else self.cost_per_day
        return cost / (tokens_per_day / 1e6)


def plan_fleet(
    demand: Demand,
    point: LoadPoint,
    accelerators_per_replica: int,
    price_per_hour: float,
    kv_cache_bytes: float,
    kv_bytes_per_token: float,
) -> FleetPlan:
    curve = demand.curve
    cap = point.rate_per_replica
    hourly = [curve.rate_at((h + 0.5) * 3600) for h in range(24)]
    s = point.summary
    n = max(s.num_succeeded, 1)
    return FleetPlan(
        mean_rate=curve.mean_rate,
        peak_rate=curve.peak_rate,
        capacity_per_replica=cap,
        replicas=math.ceil(curve.peak_rate / cap),
        accelerators_per_replica=accelerators_per_replica,
        price_per_hour=price_per_hour,
        prompt_tokens_per_request=s.total_input_tokens / n,
        output_tokens_per_request=s.total_output_tokens / n,
        prefix_hit_rate=point.prefix_hit_rate,
        kv_cache_bytes_per_replica=kv_cache_bytes,
        kv_cache_tokens_per_replica=int(kv_cache_bytes // kv_bytes_per_token),
        replica_hours_autoscaled=sum(math.ceil(r / cap) for r in hourly),
    )
