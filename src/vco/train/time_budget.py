"""Time-boxed training: a run, and its lr schedule, ends at the step a wall-clock budget reaches.

The run's warmup steps are timed first (they train it like any others), which says how many steps
the budget holds; that step becomes ``train.steps`` and ``train.lr_decay_steps``, so a decaying
schedule (``train.lr_schedule=cosine`` or ``linear``) reaches its floor exactly when time is up.
Once, REPLAN_AT of the way there, the rate of the steps since then moves the end to where the
deadline falls. Used by `vco demo` and by the miniature's ``--minutes`` runs.
"""
from __future__ import annotations

import time

from .metrics import read_metrics

PROBE_STEPS = 20              # at least this many timed steps size the run (they train it)
REPLAN_AT = 0.3               # this far to the planned end, the steps since the probe re-plan it


def step_seconds(trainer) -> float:
    """Seconds per training step, measured on the run's warmup steps (whose lr does not depend on
    where the decay ends; at least PROBE_STEPS) between their first and last log lines, so that
    the start of training and the checkpoint at its end are left out. They train the run like
    any other steps."""
    tc = trainer.cfg.train
    target, limit, start = tc.steps, tc.time_limit_min, trainer.step
    tc.time_limit_min = 0
    tc.steps = start + max(PROBE_STEPS, tc.warmup_steps - start, 2 * tc.log_every + 1)
    if start >= tc.warmup_steps:          # a continued demo: probe at the peak lr, not the old end's 0
        tc.lr_decay_steps = 10 ** 9
    trainer.train(progress=False)
    rows = [r for r in read_metrics(trainer.run_dir / "metrics.jsonl") if r["step"] > start]
    tc.steps, tc.time_limit_min = target, limit
    return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"])


def plan_schedule(trainer, train_s: float) -> "Replan":
    """Time-box the training: the run (and its lr schedule) ends at the step the remaining
    ``train_s`` seconds reach (measured, not guessed; at most train.steps), and the time limit at
    that deadline. Returns the hook that re-plans the end once from the steps trained after the probe."""
    t = time.time()
    per_step = step_seconds(trainer)
    tc = trainer.cfg.train
    cap, deadline = tc.steps, t + train_s
    end = min(cap, trainer.step + max(1, int((deadline - time.time()) / per_step)))
    tc.steps = tc.lr_decay_steps = end
    tc.time_limit_min = (deadline - time.time()) / 60     # the safety net, should the plan run late
    return Replan(trainer.step, end, deadline, cap)


class Replan:
    """``Trainer.train``'s on_step hook: once, REPLAN_AT of the way to the planned end, the rate
    of the steps since training resumed moves the end (and the decay's) to where the deadline
    falls. The warmup probe alone misjudged it by 15% (its first steps run slower, and this
    machine's speed drifts), which left minutes of the budget unused or cut the decay short.
    A decaying schedule's lr moves by a few percent at that step and still reaches 0 at the end."""

    def __init__(self, start: int, end: int, deadline: float, cap: int, clock=time.time):
        self.planned, self.deadline, self.cap, self.clock = end, deadline, cap, clock
        self.at = start + max(1, round(REPLAN_AT * (end - start)))
        self.first: tuple[int, float] | None = None      # (step, time) of the first step seen
        self.replanned: int | None = None

    def __call__(self, trainer) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (trainer.step, now)
        if self.replanned is not None or trainer.step < self.at or trainer.step == self.first[0]:
            return
        per_step = (now - self.first[1]) / (trainer.step - self.first[0])
        end = min(self.cap, trainer.step + max(1, int((self.deadline - now) / per_step)))
        tc = trainer.cfg.train
        tc.steps = tc.lr_decay_steps = self.replanned = end
        if trainer.world.is_main:
            trainer.record_config()
