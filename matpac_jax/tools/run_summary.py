r"""Summarises a training run from its `metrics.jsonl`: losses, collapse monitors, a verdict.

  python -m matpac_jax.tools.run_summary WORKDIR [--rows 8]

Prints a table of the logged steps (evenly spaced) and checks the collapse signs of DESIGN.md
section 6: loss not falling, classification perplexity near 1, one teacher class for all tokens,
a prediction head that never wins, skipped (non-finite) steps. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

COLUMNS = (
    ("step", "{:>6.0f}"),
    ("loss", "{:8.4f}"),
    ("loss_pred", "{:9.4f}"),
    ("loss_cls", "{:8.4f}"),
    ("cls/perplexity", "{:14.1f}"),
    ("cls/distinct_targets", "{:20.0f}"),
    ("mcl_temperature", "{:15.2e}"),
    ("lr", "{:9.2e}"),
)


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def health(rows: list[dict]) -> list[tuple[bool, str]]:
    """(passed, message) for each collapse check."""
    tenth = max(1, len(rows) // 10)
    first = float(np.mean([r["loss"] for r in rows[:tenth]]))
    last = float(np.mean([r["loss"] for r in rows[-tenth:]]))
    final = rows[-1]
    checks = [
        (last < first, f"loss fell from {first:.4f} (first tenth) to {last:.4f} (last)"),
        (
            final["cls/perplexity"] > 2.0,
            f"teacher class perplexity {final['cls/perplexity']:.1f} (collapse -> 1)",
        ),
        (
            final["cls/distinct_targets"] > 1,
            f"{final['cls/distinct_targets']:.0f} distinct teacher classes in the last batch",
        ),
        (sum(r["skipped"] for r in rows) == 0, "no logged step was skipped (non-finite)"),
    ]
    heads = sorted(k for k in final if k.startswith("mcl/win_rate/"))
    if len(heads) > 1:
        late = rows[-tenth:]
        rates = [float(np.mean([r[k] for r in late])) for k in heads]
        dead = [i for i, r in enumerate(rates) if r < 0.01]
        checks.append(
            (
                not dead,
                "win rate per head over the last tenth: "
                + ", ".join(f"{r:.2f}" for r in rates)
                + (f" (heads {dead} almost never win)" if dead else ""),
            )
        )
    return checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m matpac_jax.tools.run_summary", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("workdir")
    p.add_argument("--rows", type=int, default=8)
    args = p.parse_args(argv)
    rows = read_metrics(args.workdir)
    if not rows:
        print(f"{args.workdir}: no logged step yet")
        return 1
    picks = sorted(set(np.linspace(0, len(rows) - 1, min(args.rows, len(rows))).astype(int)))
    print("  ".join(name.rjust(len(fmt.format(0))) for name, fmt in COLUMNS))
    for i in picks:
        print("  ".join(fmt.format(rows[i].get(name, float("nan"))) for name, fmt in COLUMNS))
    ok = True
    for passed, message in health(rows):
        ok &= passed
        print(("  ok    " if passed else "  WARN  ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
