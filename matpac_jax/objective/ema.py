"""Exponential moving average of the teachers (docs/method.md, section 5).

The teachers are their own pytrees, never seen by the optimiser; this update is a `jax.tree.map`
inside the jitted step. Momenta come from `schedules.ema_momentum`.
"""

import jax
import jax.numpy as jnp


def ema_update(teacher, student, momentum: jax.Array | float, step: jax.Array | int):
    """teacher <- m * teacher + (1 - m) * student, leaf by leaf; the teacher unchanged at step 0.

    Computed as t + (1 - m) * (s - t), the same value with one rounding fewer on the large term,
    in the teacher's dtype (float32). Like the reference, step is the number of updates done
    before this one, and at step 0 no EMA happens. Works with a traced momentum and step.

    Args:
      teacher: pytree of float arrays.
      student: pytree of the same structure and shapes.
      momentum: scalar m in [0, 1].
      step: scalar int, 0 for the first training step.

    Returns:
      The new teacher pytree (same structure and dtypes as `teacher`).
    """
    teacher_def, student_def = jax.tree.structure(teacher), jax.tree.structure(student)
    if teacher_def != student_def:
        raise ValueError(f"teacher and student pytrees differ:\n{teacher_def}\nvs\n{student_def}")
    rate = 1.0 - jnp.asarray(momentum, jnp.float32)  # exact for m in [0.5, 1] (Sterbenz)
    # As in the reference (num_updates == 0): the first step leaves the teachers as initialised.
    skip = jnp.asarray(step) == 0

    def one(t, s):
        new = t + (rate * (s.astype(t.dtype) - t)).astype(t.dtype)
        return jnp.where(skip, t, new)

    return jax.tree.map(one, teacher, student)
