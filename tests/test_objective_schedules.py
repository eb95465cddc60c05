"""Exact-value tests of matpac_jax/objective/schedules.py against float64 formulas.

Schedules return float32: values are compared with rtol 1e-6 (a few float32 roundings), the EMA
momenta with an absolute 6e-8 (one float32 spacing just below 1), the MCL temperature with
rtol 1e-5 up to step 1e6.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matpac_jax.objective import schedules

PAPER = dict(total_steps=294_816, lr_warmup_steps=19_654, tau_warmup_steps=9_827, peak_lr=3e-4)
RTOL = 1e-6


def np_lr(step, peak, warmup, total, end=0.0):
    step = np.asarray(step, np.float64)
    warm = peak * step / warmup
    progress = np.clip((step - warmup) / (total - warmup), 0.0, 1.0)
    return np.where(step < warmup, warm, end + (peak - end) * (1 + np.cos(np.pi * progress)) / 2)


def np_linear(step, start, end, total):
    return start + (end - start) * np.minimum(np.asarray(step, np.float64) / total, 1.0)


def test_lr_exact_points():
    peak, warmup, total = 3e-4, 19_654, 294_816
    mid = warmup + (total - warmup) // 2
    points = {
        0: 0.0,
        warmup // 2: peak * (warmup // 2) / warmup,
        warmup: peak,
        mid: peak / 2 * (1 + math.cos(math.pi * (mid - warmup) / (total - warmup))),
        total: 0.0,
        total + 1000: 0.0,
    }
    for step, expected in points.items():
        np.testing.assert_allclose(
            schedules.warmup_cosine_lr(step, peak, warmup, total), expected, rtol=RTOL, atol=1e-12
        )
    np.testing.assert_allclose(
        schedules.warmup_cosine_lr(mid, peak, warmup, total), peak / 2, rtol=RTOL
    )
    # One step before the end the lr is ~2e-14: still right to float32 relative precision (the
    # float64 reference itself cancels to ~2e-6 there).
    last = peak / 2 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup)))
    np.testing.assert_allclose(
        schedules.warmup_cosine_lr(total - 1, peak, warmup, total), last, rtol=1e-5
    )


def test_lr_random_steps_jitted_with_end_value():
    steps = np.random.default_rng(0).integers(0, 1200, size=50)
    fn = jax.jit(schedules.warmup_cosine_lr, static_argnums=(1, 2, 3, 4))
    got = [fn(jnp.int32(s), 1e-3, 100, 1000, 1e-5) for s in steps]
    np.testing.assert_allclose(got, np_lr(steps, 1e-3, 100, 1000, 1e-5), rtol=RTOL, atol=1e-12)


def test_lr_without_warmup_starts_at_peak():
    np.testing.assert_allclose(schedules.warmup_cosine_lr(0, 2e-4, 0, 100), 2e-4, rtol=RTOL)


@pytest.mark.parametrize("start,end", [(0.99995, 0.99999), (0.998, 1.0)])
def test_ema_momentum_is_linear_over_the_run(start, end):
    total = 294_816
    steps = np.concatenate(
        [[0, total // 2, total, total + 7], np.random.default_rng(1).integers(0, total, size=40)]
    )
    got = np.array([schedules.ema_momentum(jnp.int32(s), start, end, total) for s in steps])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np_linear(steps, start, end, total), rtol=0, atol=6e-8)
    assert got[0] == np.float32(start) and got[2] == np.float32(end) == got[3]


def test_teacher_temperature_warms_up_then_stays():
    warmup = 9_827
    steps = np.array([0, 1, 4_000, warmup - 1, warmup, warmup + 1, 200_000])
    got = [schedules.teacher_temperature(s, warmup) for s in steps]
    np.testing.assert_allclose(got, np_linear(steps, 0.04, 0.07, warmup), rtol=RTOL)
    assert got[0] == np.float32(0.04) and got[4] == got[6] == np.float32(0.07)


def test_mcl_temperature_is_accurate_in_float32_for_big_steps():
    steps = np.concatenate(
        [
            [0, 1, 230_255, 230_256, 294_816, 1_000_000],
            np.random.default_rng(2).integers(0, 1_000_000, size=40),
        ]
    )
    got = np.array([jax.jit(schedules.mcl_temperature)(jnp.int32(s)) for s in steps])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 0.1 * 0.99997 ** steps.astype(np.float64), rtol=1e-5)


def test_hard_wta_step_of_the_paper_run():
    step = schedules.hard_wta_step(0.1, 0.99997, 1e-4)
    assert step == 230_256 == math.ceil(math.log(1e-3) / math.log(0.99997))
    assert 0.1 * 0.99997 ** (step - 1) > 1e-4 >= 0.1 * 0.99997**step
    # The float32 schedule switches at the same step.
    assert schedules.mcl_temperature(step - 1) > np.float32(1e-4) >= schedules.mcl_temperature(step)
    assert step / 294_816 == pytest.approx(0.781, abs=1e-4)


def test_mcl_decay_for_run_both_directions():
    # Paper run -> paper decay.
    assert schedules.mcl_decay_for_run(294_816) == pytest.approx(0.99997, abs=1e-9)
    # Any run -> its decay puts the switch at the asked fraction.
    for total, frac in [(294_816, 0.781), (10_000, 0.781), (1_234, 0.5)]:
        decay = schedules.mcl_decay_for_run(total, frac)
        np.testing.assert_allclose(0.1 * decay ** (frac * total), 1e-4, rtol=1e-9)
        assert abs(schedules.hard_wta_step(0.1, decay, 1e-4) - frac * total) <= 1
    with pytest.raises(ValueError):
        schedules.mcl_decay_for_run(0)


def test_schedules_bundle_of_the_paper_run():
    sched = schedules.Schedules(**PAPER)
    out = jax.jit(sched)(jnp.int32(123_456))
    np.testing.assert_allclose(out["lr"], np_lr(123_456, 3e-4, 19_654, 294_816), rtol=RTOL)
    np.testing.assert_allclose(
        out["ema/encoder"], np_linear(123_456, 0.99995, 0.99999, 294_816), rtol=0, atol=6e-8
    )
    np.testing.assert_allclose(
        out["ema/cls_head"], np_linear(123_456, 0.998, 1.0, 294_816), rtol=0, atol=6e-8
    )
    np.testing.assert_allclose(out["teacher_tau"], 0.07, rtol=RTOL)
    np.testing.assert_allclose(out["mcl_temperature"], 0.1 * 0.99997**123_456, rtol=1e-5)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in out.values())
    np.testing.assert_allclose(sched.lr(19_654), 3e-4, rtol=RTOL)


@pytest.mark.parametrize(
    "bad",
    [
        dict(total_steps=0),
        dict(lr_warmup_steps=300_000),
        dict(tau_warmup_steps=-1),
        dict(encoder_ema=(0.9, 1.2)),
        dict(mcl_decay=1.0),
    ],
)
def test_schedules_reject_bad_numbers(bad):
    with pytest.raises(ValueError):
        schedules.Schedules(**{**PAPER, **bad})
