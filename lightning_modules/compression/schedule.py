"""When a method's one-off compression work happens: a `Schedule` value.

    Schedule(start=1, end=3, frequency=1, interval="epoch")   # at epochs 1, 2, 3
    Schedule(start=2)                                         # once, at epoch 2

Times count from 0 in the schedule's `interval` (epoch: the epoch about to start; step: the
optimizer step about to run). The work happens at `start`, every `frequency` after it, and at
`end` (inclusive; `end=None` means `start`: one-shot). `key` is the config prefix the messages
name (e.g. "method.prune"). Pure values: a method keeps which times it has done.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

INTERVALS = ("epoch", "step")


def _int(key: str, v, lo: int, why: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{key}={v}: must be an integer >= {lo}{why}")
    return v


@dataclass(frozen=True)
class Schedule:
    start: int = 0
    end: int | None = None
    frequency: int = 1
    interval: str = "epoch"
    key: str = "method"
    min_start: int = 0          # e.g. 1 where the work needs one interval of training first
    one_step: bool = field(init=False, default=False)  # built without an end: one step at start

    @property
    def _last_key(self) -> str:
        """The config key of the last step: `end` for a ramp, `start` for a one-step schedule
        built without an end (weight sharing, PQ)."""
        return "start" if self.one_step else "end"

    def __post_init__(self):
        if self.interval not in INTERVALS:
            raise ConfigError(f"{self.key}.interval={self.interval}: valid: {', '.join(INTERVALS)}")
        why = " (the work needs one interval of training first)" if self.min_start else ""
        _int(f"{self.key}.start", self.start, self.min_start, why)
        object.__setattr__(self, "one_step", self.end is None)
        if self.end is None:
            object.__setattr__(self, "end", self.start)
        _int(f"{self.key}.end", self.end, self.start)
        _int(f"{self.key}.frequency", self.frequency, 1)

    @property
    def times(self) -> list[int]:
        return sorted({*range(self.start, self.end, self.frequency), self.end})

    @property
    def last(self) -> int:
        return self.end

    def due(self, t: int, interval: str) -> bool:
        """Whether the work is due at time t of `interval`."""
        return interval == self.interval and (t == self.end or (
            self.start <= t < self.end and (t - self.start) % self.frequency == 0))

    def done(self, t: int) -> bool:
        """Whether time t (in this schedule's interval) is at or past its last step."""
        return t >= self.end

    def check(self, max_epochs: int | None) -> None:
        """A schedule in epochs must end before the run does (epochs count from 0)."""
        if self.interval == "epoch" and isinstance(max_epochs, int) and 0 < max_epochs <= self.end:
            raise ConfigError(f"{self.key}.{self._last_key}={self.end}: must be < trainer.max_epochs={max_epochs} "
                              "(epochs count from 0)")

    def unfinished(self, done: set[tuple[str, int]]) -> str | None:
        """A one-line reason if the last step was never reached, else None."""
        if (self.interval, self.end) in done:
            return None
        return (f"{self.key}.{self._last_key}={self.end}: the run ended before this {self.interval} "
                "(schedule unfinished)")

    def after(self, other: "Schedule") -> None:
        """This schedule must start after `other` ends, in the same interval (stages in order)."""
        if self.interval != other.interval:
            raise ConfigError(f"{self.key}.interval={self.interval}: must equal "
                              f"{other.key}.interval={other.interval}")
        if self.start <= other.end:
            raise ConfigError(f"{self.key}.start={self.start}: must be after the last step of "
                              f"{other.key} ({other.key}.end={other.end})")
