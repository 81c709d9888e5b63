"""The sizes of Sec. 7's synthetic experiments at two scales, ``book`` and ``paper`` (``SCALES``).

The paper does not print its sizes (App. J lost them in the text we have): every number
here is ours. A ``Scale`` holds the grids of Fig. 2a/2b (``K``, ``N_ft``, ``R``), the seeds,
the pre-training schedule and fine-tuning, and how each architecture of Table 3 (``Arch``)
is trained; everything is checked when it is built, before any run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product

from . import checks
from .data import DataConfig
from .model import ModelConfig
from .train import FTConfig, Schedule


@dataclass(frozen=True)
class Arch:
    """How one architecture of Table 3 is trained: constant-rate gradient descent for ``steps``
    (``schedule`` when given; ``eta_context`` on the data with the context token when given),
    then ``ft_steps`` of fine-tuning at ``ft_eta`` (rates are ours)."""

    arch: str
    eta: float
    steps: int
    ft_eta: float
    ft_steps: int
    schedule: Schedule | None = None
    eta_context: float | None = None

    def __post_init__(self) -> None:
        checks.choice("arch", self.arch, ("standard", "uniform_mlp", "attention_only", "simplified"))
        checks.real("eta", self.eta, lo=0)
        checks.integer("steps", self.steps, lo=0)
        checks.real("ft_eta", self.ft_eta, lo=0)
        checks.integer("ft_steps", self.ft_steps, lo=0)
        if self.schedule is not None:
            checks.of_type("schedule", self.schedule, Schedule)
        elif not (self.eta > 0 and self.steps >= 1):
            raise ValueError(f"Arch {self.arch!r} without a schedule needs eta > 0 and steps >= 1, got eta={self.eta}, "
                             f"steps={self.steps}")
        if self.ft_steps and not self.ft_eta > 0:
            raise ValueError(f"ft_eta = {self.ft_eta} must be > 0 when ft_steps = {self.ft_steps} > 0")
        if self.eta_context is not None:
            checks.positive("eta_context", self.eta_context)

    def on(self, context: bool) -> "Arch":
        """The settings used on the data with (``True``) or without the context token."""
        return replace(self, eta=self.eta_context, eta_context=None) if context and self.eta_context else self

    @property
    def pt_schedule(self) -> Schedule:
        return self.schedule or Schedule.constant(self.eta, self.steps)


@dataclass(frozen=True)
class Scale:
    """Sizes of one scale of the experiments. The paper does not print its sizes (App. J
    lost them in the text we have): every number here is ours, see ``SCALES``."""

    base: DataConfig
    K: tuple[int, ...]
    N_ft: tuple[int, ...]
    R: tuple[int, ...]
    K_of_R: tuple[int, ...]           # the K values of the R sweep (Fig. 2b)
    seeds: tuple[int, ...]
    schedule: Schedule
    ft: FTConfig
    table3_data: DataConfig
    archs: tuple[Arch, ...]
    table3_seeds: tuple[int, ...] = (0,)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        """Every list non-empty, of ints; every grid cell a valid ``DataConfig`` (``K <= R``,
        ``1 <= N_ft <= N_f``); seeds distinct non-negative ints. Checked here, before any run."""
        checks.of_type("base", self.base, DataConfig)
        checks.of_type("table3_data", self.table3_data, DataConfig)
        checks.of_type("schedule", self.schedule, Schedule)
        checks.of_type("ft", self.ft, FTConfig)
        checks.of_type("model", self.model, ModelConfig)
        for name in ("K", "N_ft", "R", "K_of_R"):
            object.__setattr__(self, name, tuple(checks.ints(name, getattr(self, name), lo=1)))
        for name in ("seeds", "table3_seeds"):
            object.__setattr__(self, name, tuple(checks.seeds(name, getattr(self, name), distinct=True)))
        for k, n in product(self.K, self.N_ft):
            self.base.with_(K=k, N_ft=n)
        for k, r, n in product(self.K_of_R, self.R, self.N_ft):
            self.base.with_(K=k, R=r, N_ft=n)
        for a in self.archs:
            checks.of_type("archs[...]", a, Arch)

    def with_seeds(self, n: int | None) -> "Scale":
        """The same scale with seeds ``0 .. n-1`` (``None`` keeps them; ``n`` an int >= 1)."""
        return self if n is None else replace(self, seeds=tuple(range(checks.integer("seeds", n, lo=1))))


def _archs(steps: int, std_steps: int, ft_steps: int) -> tuple[Arch, ...]:
    """Table 3's architectures with our rates, the largest of a few tried (1, 3, 30) that train
    without collapsing; uniform attention + MLP needs a smaller one with the context token
    (at 30, the first steps kill every neuron on inputs that contain c)."""
    return (Arch("standard", 1.0, std_steps, 0.5, ft_steps),
            Arch("uniform_mlp", 30.0, steps, 10.0, ft_steps, eta_context=3.0),
            Arch("attention_only", 30.0, steps, 30.0, 0),
            Arch("simplified", 0.0, 0, 30.0, ft_steps, Schedule()))


SCALES: dict[str, Scale] = {
    "book": Scale(base=DataConfig(N_f=100, N_r=50, R=20), K=(1, 2, 4), N_ft=(10, 25, 50, 80),
                  R=(10, 20, 40), K_of_R=(4,), seeds=(0, 1, 2, 3, 4), schedule=Schedule(), ft=FTConfig(steps=200),
                  table3_data=DataConfig(N_f=100, N_r=0, K=5, R=20, N_ft=50, context=False),
                  archs=_archs(500, 300, 200)),
    "paper": Scale(base=DataConfig(N_f=200, N_r=100, R=20), K=(1, 2, 4, 8, 16), N_ft=(10, 25, 50, 100, 150),
                   R=(10, 20, 40, 80), K_of_R=(2, 4, 8), seeds=(0, 1, 2, 3, 4),
                   schedule=Schedule(T2=1500, T=3000), ft=FTConfig(steps=2000),
                   table3_data=DataConfig(N_f=100, N_r=0, K=5, R=20, N_ft=50, context=False),
                   archs=_archs(2000, 1000, 1000), table3_seeds=(0, 1, 2, 3, 4)),
}
