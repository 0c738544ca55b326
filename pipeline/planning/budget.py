"""A run that keeps to a budget (``--max-gpu-hours``, or ``--max-cost`` at ``--gpu-hour-price``).

Encoder-hours are what the run pays for: the planned encoders (GPUs; on a cluster without GPUs,
the CPU encode actors) times the time since the pipeline started. Once encoding has gone on for
``warmup_s``, the run projects its total: what it spent, plus the encoders' time for the records
left at the recent encode rate. When the projection exceeds the cap less its margin, the run stops
at a consistent point (``pipeline.ledger.stop``) before spending past the cap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Budget:
    max_hours: float  # encoder-hours (GPU-hours on GPUs); from --max-gpu-hours, or --max-cost / price
    encoders: float  # GPUs (or CPU encode actors) the run holds
    margin: float = 0.1  # stop when the projection passes max_hours x (1 - margin)
    warmup_s: float = 30.0  # seconds of encoding before any projection is trusted
    what: str = "GPU-hours"

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
        )


@dataclass(frozen=True)
class Projection:
    spent_hours: float
    projected_hours: float | None  # None: not yet (warm-up) or no rate
    records_left: float | None

    def describe(self, budget: Budget) -> str:
        projected = "not yet" if self.projected_hours is None else f"{self.projected_hours:.4g}"
        return (
            f"{budget.what}: {self.spent_hours:.4g} spent, {projected} projected, cap {budget.max_hours:.4g} "
            f"(stops past {budget.max_hours * (1 - budget.margin):.4g}: margin {budget.margin:.0%})"
        )


def project(
    budget: Budget,
    *,
    elapsed_s: float,
    encoding_s: float | None,
    records_left: float | None,
    records_per_s: float,
) -> Projection:
    """``elapsed_s``: since the pipeline started (the encoders are held); ``encoding_s``: since the
    first encoded batch (None: none yet); ``records_left`` at ``records_per_s`` (the recent rate)."""
    spent = budget.encoders * elapsed_s / 3600
    if encoding_s is None or encoding_s < budget.warmup_s or records_left is None or records_per_s <= 0:
        return Projection(spent, None, records_left)
    return Projection(spent, spent + budget.encoders * records_left / records_per_s / 3600, records_left)


def over(budget: Budget, projection: Projection) -> bool:
    limit = budget.max_hours * (1 - budget.margin)
    return projection.spent_hours > limit or (
        projection.projected_hours is not None and projection.projected_hours > limit
    )
