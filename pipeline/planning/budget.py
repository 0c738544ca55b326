"""A run that keeps to a budget (``--max-gpu-hours``, or ``--max-cost`` at ``--gpu-hour-price``).

Encoder-hours are what the run pays for: the planned encoders (GPUs; on a cluster without GPUs,
the CPU encode actors) times the time since the pipeline started. Once encoding has gone on for
``warmup_s`` (at most a quarter of the cap's time: a small cap is not spent warming up), the run
projects its total: what it spent, plus the encoders' time for the records left at the recent
encode rate. A stop is not instant: the next budget check, the readers' next look at the stop
request, and the records already read (``in_flight_records``) still being encoded all cost
encoder time, so the run asks to stop once what it will have spent *by the time it stops*, or its
projection, passes the cap less its margin; it then stops at a consistent point
(``pipeline.ledger.stop``) before spending past the cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Budget:
    max_hours: float  # encoder-hours (GPU-hours on GPUs); from --max-gpu-hours, or --max-cost / price
    encoders: float  # GPUs (or CPU encode actors) the run holds
    margin: float = 0.1  # stop when the projection passes max_hours x (1 - margin)
    warmup_s: float = 30.0  # seconds of encoding before any projection is trusted
    what: str = "GPU-hours"
    reaction_s: float = 4.0  # from passing the cap to the readers stopping: a budget check and a stop poll
    in_flight_records: int = 0  # read before the stop and encoded after it (blocks the pipeline holds)

    @property
    def limit(self) -> float:
        return self.max_hours * (1 - self.margin)

    @property
    def warmup(self) -> float:
        """Seconds of encoding before the projection is trusted: ``warmup_s``, at most a quarter of
        the cap's time per encoder."""
        return min(self.warmup_s, 0.25 * self.max_hours * 3600 / self.encoders)

    @classmethod
    def of(
        cls,
        *,
        max_gpu_hours: float | None,
        max_cost: float | None,
        gpu_hour_price: float | None,
        encoders: float,
        margin: float,
        warmup_s: float,
        on_gpu: bool,
        reaction_s: float = 4.0,
        in_flight_records: int = 0,
    ) -> "Budget | None":
        caps = [h for h in (max_gpu_hours, (max_cost / gpu_hour_price) if max_cost and gpu_hour_price else None) if h]
        if not caps:
            return None
        return cls(
            max_hours=min(caps),
            encoders=max(encoders, 1.0),
            margin=margin,
            warmup_s=warmup_s,
            what="GPU-hours" if on_gpu else "encoder-hours (CPU encode actors)",
            reaction_s=reaction_s,
            in_flight_records=in_flight_records,
        )


@dataclass(frozen=True)
class Projection:
    spent_hours: float
    projected_hours: float | None  # None: not yet (warm-up) or no rate
    records_left: float | None
    at_stop_hours: float = 0.0  # what will have been spent if a stop were asked for now
    records_to_do: float | None = None  # this run's records in all, as estimated now (the left ones plus encoded)

    def describe(self, budget: Budget) -> str:
        projected = "not yet" if self.projected_hours is None else f"{self.projected_hours:.4g}"
        return (
            f"{budget.what}: {self.spent_hours:.4g} spent, {projected} projected, cap {budget.max_hours:.4g} "
            f"(stops past {budget.limit:.4g}: margin {budget.margin:.0%})"
        )


def project(
    budget: Budget,
    *,
    elapsed_s: float,
    encoding_s: float | None,
    records_left: float | None,
    records_per_s: float,
    records_to_do: float | None = None,
) -> Projection:
    """``elapsed_s``: since the pipeline started (the encoders are held); ``encoding_s``: since the
    first encoded batch (None: none yet); ``records_left`` at ``records_per_s`` (the recent rate)."""
    spent = budget.encoders * elapsed_s / 3600
    drain_s = budget.in_flight_records / records_per_s if records_per_s > 0 else 0.0
    at_stop = spent + budget.encoders * (budget.reaction_s + drain_s) / 3600
    if encoding_s is None or encoding_s < budget.warmup or records_left is None or records_per_s <= 0:
        return Projection(spent, None, records_left, at_stop, records_to_do)
    projected = spent + budget.encoders * records_left / records_per_s / 3600
    return Projection(spent, projected, records_left, at_stop, records_to_do)


def over(budget: Budget, projection: Projection) -> bool:
    """Time to ask for the stop: by the time the run stops it would pass the cap less its margin, or
    the whole run is projected to."""
    return max(projection.spent_hours, projection.at_stop_hours) > budget.limit or (
        projection.projected_hours is not None and projection.projected_hours > budget.limit
    )


def for_plan(options: Any, plan: Any, *, rows_per_block: int, reaction_s: float) -> Budget | None:
    """The run's budget from its ``BudgetOptions`` and plan (None without a cap): encoders as the plan
    counts them; ``reaction_s`` from passing the cap to the readers stopping; what is read by then is
    still encoded, about a block per read task and per encode actor."""
    return Budget.of(
        max_gpu_hours=options.max_gpu_hours,
        max_cost=options.max_cost,
        gpu_hour_price=options.gpu_hour_price,
        encoders=plan.encoders,
        margin=options.budget_margin,
        warmup_s=options.budget_warmup_s,
        on_gpu=plan.device == "cuda",
        reaction_s=reaction_s,
        in_flight_records=rows_per_block * (2 + int(plan.gpu_actors)),
    )
