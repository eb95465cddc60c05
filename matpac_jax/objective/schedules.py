"""Per-step schedules of a MATPAC++ run (docs/method.md, sections 4 and 5).

Pure functions of an integer step (Python, numpy or traced) returning float32 scalars; the
configuration numbers (peaks, lengths, rates) are static Python values. `Schedules` gathers them
from config-level numbers. Steps are counted from 0 (the first update); float32 holds every step
exactly up to 2**24.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _step_f32(step) -> jax.Array:
    return jnp.asarray(step).astype(_F32)


def linear(step, start: float, end: float, total_steps: int) -> jax.Array:
    """start -> end linearly over [0, total_steps], then constant end (the reference's annealed rate).

    Written as start * (1 - f) + end * f so both ends are hit exactly.
    """
    frac = jnp.clip(_step_f32(step) / max(total_steps, 1), 0.0, 1.0)
    return start * (1.0 - frac) + end * frac


def warmup_cosine_lr(
    step, peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0
) -> jax.Array:
    """Learning rate: linear 0 -> peak over warmup_steps, then cosine to end_lr at total_steps.

    Same as fairseq's `cosine` scheduler with warmup_init_lr = min_lr = end_lr = 0; usable as an
    optax schedule. Constant end_lr after total_steps.
    """
    step = _step_f32(step)
    warm = peak_lr * step / max(warmup_steps, 1)
    remaining = jnp.clip((total_steps - step) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    # (1 + cos(pi * progress)) / 2 written as sin^2(pi * remaining / 2): same value, but it keeps
    # full float32 relative precision as the lr approaches end_lr instead of cancelling near -1.
    cosine = end_lr + (peak_lr - end_lr) * jnp.square(jnp.sin(0.5 * jnp.pi * remaining))
    return jnp.where(step < warmup_steps, warm, cosine)


def ema_momentum(step, start: float, end: float, total_steps: int) -> jax.Array:
    """EMA momentum linear start -> end over total_steps, as precise as a float32 momentum can be.

    The interpolation runs on 1 - m (about 1e-5, where float32 is fine-grained) and only the final
    `1 - x` rounds: m is then off by at most half a float32 spacing near 1 (3e-8), i.e. at most 0.3%
    of the update rate 1 - m = 1e-5. Interpolating m directly would be a few times worse.
    """
    return 1.0 - linear(step, 1.0 - start, 1.0 - end, total_steps)


def teacher_temperature(
    step, warmup_steps: int, start: float = 0.04, end: float = 0.07
) -> jax.Array:
    """Teacher softmax temperature: linear start -> end over warmup_steps, then end."""
    return linear(step, start, end, warmup_steps)


def mcl_temperature(step, t0: float = 0.1, decay: float = 0.99997) -> jax.Array:
    """MCL temperature T = t0 * decay**step.

    Computed as t0 * exp(step * log(decay)) with log(decay) taken in float64: float32 `decay**step`
    would carry decay's own rounding (3e-8) times the step into the exponent, ~1% of T at step 3e5;
    this form stays within ~1e-6 relative for steps up to 1e6.
    """
    return t0 * jnp.exp(_step_f32(step) * math.log(decay))


def hard_wta_step(t0: float = 0.1, decay: float = 0.99997, threshold: float = 1e-4) -> int:
    """First step at which T(step) <= threshold, i.e. the MCL loss is the hard minimum.

    230,256 for the paper numbers (the crossing is at 230,255.4, 78.1% of 294,816 steps).
    """
    if not 0.0 < decay < 1.0 or not 0.0 < threshold < t0:
        raise ValueError(
            f"need 0 < decay < 1 and 0 < threshold < t0, got {decay}, {threshold}, {t0}"
        )
    return math.ceil(math.log(threshold / t0) / math.log(decay))


def mcl_decay_for_run(
    total_steps: int, switch_fraction: float = 0.781, t0: float = 0.1, threshold: float = 1e-4
) -> float:
    """Per-step decay rate that makes T cross `threshold` at `switch_fraction` of the run.

    Gives 0.99997 - 4.9e-10 for the paper's 294,816 steps (switch at step 230,252 instead of
    230,256). Use it to keep the switch to hard winner-takes-all at the same point of training in
    a run of another length.
    """
    if total_steps <= 0 or not 0.0 < switch_fraction <= 1.0 or not 0.0 < threshold < t0:
        raise ValueError(
            f"need total_steps > 0, 0 < switch_fraction <= 1 and 0 < threshold < t0, got "
            f"{total_steps}, {switch_fraction}, {threshold}, {t0}"
        )
    return math.exp(math.log(threshold / t0) / (switch_fraction * total_steps))


@dataclasses.dataclass(frozen=True)
class Schedules:
    """Every per-step schedule of a run, from config-level numbers; defaults are the papers'.

    The paper run is `Schedules(total_steps=294_816, lr_warmup_steps=19_654,
    tau_warmup_steps=9_827, peak_lr=3e-4)`. For a run of another length, keep the MCL switch at the
    same fraction of training with `mcl_decay=mcl_decay_for_run(total_steps)`.
    """

    total_steps: int
    lr_warmup_steps: int
    tau_warmup_steps: int
    peak_lr: float
    end_lr: float = 0.0
    encoder_ema: tuple[float, float] = (0.99995, 0.99999)  # momentum start, end over the run
    cls_head_ema: tuple[float, float] = (0.998, 1.0)
    teacher_tau: tuple[float, float] = (0.04, 0.07)  # start, end over tau_warmup_steps
    mcl_t0: float = 0.1
    mcl_decay: float = 0.99997
    mcl_threshold: float = 1e-4

    def __post_init__(self):
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        for name in ("lr_warmup_steps", "tau_warmup_steps"):
            if not 0 <= getattr(self, name) <= self.total_steps:
                raise ValueError(
                    f"{name} must be in [0, total_steps={self.total_steps}], got {getattr(self, name)}"
                )
        for name in ("encoder_ema", "cls_head_ema"):
            if not all(0.0 <= m <= 1.0 for m in getattr(self, name)):
                raise ValueError(f"{name} momenta must be in [0, 1], got {getattr(self, name)}")
        hard_wta_step(self.mcl_t0, self.mcl_decay, self.mcl_threshold)  # validates the MCL numbers

    def lr(self, step) -> jax.Array:
        """Learning rate at `step`; pass this method to optax as the schedule."""
        return warmup_cosine_lr(
            step, self.peak_lr, self.lr_warmup_steps, self.total_steps, self.end_lr
        )

    def __call__(self, step) -> dict[str, jax.Array]:
        """All schedules at `step`, float32 scalars keyed by the names the trainer logs."""
        return {
            "lr": self.lr(step),
            "ema/encoder": ema_momentum(step, *self.encoder_ema, self.total_steps),
            "ema/cls_head": ema_momentum(step, *self.cls_head_ema, self.total_steps),
            "teacher_tau": teacher_temperature(step, self.tau_warmup_steps, *self.teacher_tau),
            "mcl_temperature": mcl_temperature(step, self.mcl_t0, self.mcl_decay),
        }


def epoch_cosine_lr(
    step,
    peak_lr: float,
    steps_per_epoch: float,
    warmup_epochs: float,
    total_epochs: float,
    min_lr: float = 1e-7,
) -> jax.Array:
    """Fine-tuning's learning rate, timm's `CosineLRScheduler` stepped each update at the
    fractional epoch t = step / steps_per_epoch (as M2D's fine-tuning does): linear 0 -> peak
    while t < warmup_epochs, then `min_lr + (peak - min_lr) (1 + cos(pi t / total_epochs)) / 2`.

    As timm's default (no warm-up prefix), the cosine counts t from 0, not from the end of the
    warm-up, so the rate drops a little where the warm-up ends.
    """
    t = _step_f32(step) / steps_per_epoch
    warm = peak_lr * t / max(warmup_epochs, 1e-9)
    progress = jnp.clip(t / total_epochs, 0.0, 1.0)
    cosine = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(t < warmup_epochs, warm, cosine)
