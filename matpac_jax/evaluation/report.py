"""The probe's reports: report.json / report.md, comparison tables, warnings, confusion pictures.

Everything here formats results that `probe_lib.evaluate` computed; nothing trains. No jax import:
`python -m matpac_jax.evaluation.probe table ...` answers without the slow imports.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse

import numpy as np

from matpac_jax import cli

# What writes the reports (named in error messages).
COMMAND = "python -m matpac_jax.evaluation.probe"


# ---------------------------------------------------------------------------------------------
# Warnings about results that would mislead.


def class_warnings(onehot, partitions, classes, names) -> list[str]:
    """Per partition: classes with one training row, and classes tested or validated on but
    absent from train.

    Args:
      onehot: (n, C) bool, row r has class c.
      partitions: `probe_lib.Partition`s, named by `names` ("" for a lone split).
      classes: the C class names.
      names: one name per partition.

    Returns:
      One message per problem, classes in `natural_order`.
    """
    out = []
    order = [classes.index(c) for c in natural_order(classes)]
    for name, part in zip(names, partitions):
        where = f" ({name})" if name else ""
        held = part.test if part.valid is None else np.r_[part.test, part.valid]
        held_name = "test" if part.valid is None else "test/valid"
        n_train = onehot[part.train].sum(axis=0)
        for c in order:
            if n_train[c] == 1:
                out.append(
                    f"class {classes[c]!r} has 1 training clip{where}: too few to learn from or "
                    "to hold out for validation"
                )
            elif n_train[c] == 0 and onehot[held, c].any():
                out.append(
                    f"class {classes[c]!r} is in the {held_name} rows but not in train{where}: "
                    "the classifier cannot learn it"
                )
    return out


def cap_warnings(result: dict, seeds, names, cfg) -> list[str]:
    """Runs of `evaluate`'s `result` whose chosen classifier hit the epoch cap before early
    stopping triggered.

    Ties count as improvements (EVAR's `>=`), so a validation score saturated at its maximum
    also runs to the cap: the warning says the run did not stop by itself, nothing more.

    Args:
      result: `probe_lib.evaluate`'s dict.
      seeds: the seeds, in `result`'s order.
      names: one name per partition ("" for a lone split).
      cfg: the `probe_lib.ProbeConfig` the result was trained with.

    Returns:
      One message per capped run.
    """
    grid = len(cfg.learning_rates) > 1
    # A lone learning rate may simply be too small; the grid already tried larger ones.
    hint = "" if grid else "; a larger --lr may help"
    out = []
    for s, seed in enumerate(seeds):
        for f, name in enumerate(names):
            if not result["stopped_early"][s][f]:
                where = f", {name}" if name else ""
                lr = f" at the chosen lr {lr_text(result['learning_rate'][s][f])}" if grid else ""
                out.append(
                    f"seed {seed}{where}: hit the {cfg.max_epochs}-epoch cap before early "
                    f"stopping{lr} (validation last matched or beat its best at epoch "
                    f"{result['best_epoch'][s][f]}, patience {cfg.patience}): may not have "
                    f"converged{hint}"
                )
    return out


# ---------------------------------------------------------------------------------------------
# Class order and the picture of a confusion matrix.

_NOTE = re.compile(r"^([A-Ga-g])([#♯b♭]?)(-?\d+)?$")
_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def natural_order(labels) -> list[str]:
    """Numbers numerically, note names musically (C, C#, D, ... B; octave first), the rest
    alphabetically."""
    labels = list(labels)
    try:
        return sorted(labels, key=float)
    except ValueError:
        pass
    notes = [_NOTE.match(x) for x in labels]
    if all(notes) and len({m[3] is None for m in notes}) <= 1:
        shift = {"#": 1, "♯": 1, "b": -1, "♭": -1}
        keys = [(int(m[3] or 0), _SEMITONE[m[1].upper()] + shift.get(m[2], 0)) for m in notes]
        return [x for _, x in sorted(zip(keys, labels))]
    return sorted(labels)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str, *, title: str) -> None:
    """Writes a PNG of a confusion matrix: true class down, predicted across, in
    `natural_order`; colour = share of the true class's row, text = count (blank for 0)."""
    # The Agg canvas directly, not pyplot: no display needed and no global backend switched
    # under a notebook that imports this module.
    # pylint: disable=g-import-not-at-top
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = [classes.index(c) for c in natural_order(classes)]
    counts = np.asarray(matrix)[np.ix_(order, order)]
    names = [classes[i] for i in order]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(names)
    side = min(3.0 + 0.35 * n, 30.0)
    fig = Figure(figsize=(side + 1.5, side + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize=10)
    size = max(5.0, min(10.0, 200.0 / n))
    for i, j in zip(*np.nonzero(counts)):
        color = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=size, color=color)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# report.json, report.md and comparison tables.


def cell(entry: dict, key: str = "") -> str:
    """`87.3 ± 1.2`: mean and 95% CI half-width in percent (`key` "auc": the ROC-AUC's)."""
    prefix = f"{key}_" if key else ""
    half = entry[f"{prefix}ci95"]
    ci = "" if half is None else f" ± {100 * half:.1f}"
    return f"{100 * entry[f'{prefix}mean']:.1f}{ci}"


def score_text(entry: dict) -> str:
    """The task's score cell: `87.3 ± 1.2`, and for a multi-label task its macro ROC-AUC
    beside the mAP: `40.8 ± 0.3 (ROC-AUC 91.0 ± 0.1)`."""
    if "auc_mean" not in entry:
        return cell(entry)
    if entry["auc_mean"] is None or math.isnan(entry["auc_mean"]):  # no test class has both
        return cell(entry) + " (ROC-AUC n/a)"
    return cell(entry) + f" (ROC-AUC {cell(entry, 'auc')})"


def write_report(out: str, report: dict) -> None:
    """Writes `report` as OUT/report.json and its markdown rendering as OUT/report.md."""
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(render_report(report))


def lr_text(lr: float) -> str:
    """A learning rate as `3e-5`, `1e-3`, `3.2e-4`: short, and the same width across a grid."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def chosen_text(entry: dict) -> str:
    """The learning rates a task's runs chose: `1e-3`, or `1e-3 ×2, 3e-3 ×1` when they differ."""
    chosen = [lr for row in entry.get("learning_rate", []) for lr in row]
    counts = {lr: chosen.count(lr) for lr in sorted(set(chosen))}
    if len(counts) == 1:
        return lr_text(chosen[0])
    return ", ".join(f"{lr_text(lr)} ×{k}" for lr, k in counts.items())


def render_report(report: dict) -> str:
    """Markdown: one row per task, the learning rates chosen (grid protocol), the warnings and
    the confusion matrices."""
    protocol = report.get("protocol", {})
    lines = [
        f"# Linear probe: `{report['encoder']}`",
        "",
        (
            f"Protocol `{protocol.get('name', '?')}` (docs/probe.md). Scores in %: mean ± 95% CI "
            "over seeds (k-fold: a seed's score is its mean over folds). The interval covers the "
            "classifier's seeds on fixed embeddings, the learning rate chosen once for all of "
            "them; not which clips are in the test split, which often moves a score more. "
            f"`{COMMAND} compare` sets this report beside another encoder's with an interval "
            "on the difference that covers both, from the test logits stored here "
            "(predictions_TASK.npz)."
        ),
        "",
        "| task | metric | score | lr | train / valid / test | clip (s) | dim | epochs (best) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in report["tasks"]:
        folds = f" ({len(e['folds'])} folds)" if e["folds"] else ""
        sizes = " / ".join(f"{np.mean(e[k]):.0f}" for k in ("n_train", "n_valid", "n_test"))
        epochs = f"{np.mean(e['epochs_run']):.0f} ({np.mean(e['best_epoch']):.0f})"
        lines.append(
            f"| {e['task']}{folds} | {e['metric']} | {score_text(e)} | {chosen_text(e)} | {sizes} | "
            f"{_seconds(e['clip_seconds'])} | {e['embedding_dim']} | {epochs} |"
        )
    if len(protocol.get("learning_rates", ())) > 1:
        lines += ["", *render_grid(report["tasks"], protocol["learning_rates"])]
    warned = [(e["task"], w) for e in report["tasks"] for w in e.get("warnings", [])]
    if warned:
        lines += ["", "## Warnings", ""] + [f"- {t}: {w}" for t, w in warned]
    pngs = [e for e in report["tasks"] if e.get("confusion_png")]
    if pngs:
        lines += ["", "## Confusion matrices", ""]
        for e in pngs:
            # A relative link: the report and its pictures move together.
            link = urllib.parse.quote(e["confusion_png"])
            lines += [f"### {e['task']}", "", f"![confusion matrix of {e['task']}]({link})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _seconds(clip_seconds) -> str:
    """The clip length column: seconds, or `whole` (clips embedded whole: the probe's suite)."""
    return "whole" if clip_seconds is None else f"{clip_seconds:g}"


def render_grid(entries: list[dict], learning_rates) -> list[str]:
    """The grid section of report.md: per task and learning rate the mean best validation score
    (×k: chosen by k runs), then every run's choice."""
    lines = [
        "## Learning rates chosen on validation",
        "",
        (
            "Validation score in % per learning rate (mean over runs of its best epoch); ×k: "
            "chosen for k runs (per task and fold, the best of these means; ties: the lower mean "
            "validation loss). Test scores are the chosen ones'."
        ),
        "",
        "| task | " + " | ".join(map(lr_text, learning_rates)) + " |",
        "|---|" + "---|" * len(learning_rates),
    ]
    for e in entries:
        valid = np.array([v for row in e["valid_by_lr"] for v in row], np.float64)
        chosen = [lr for row in e["learning_rate"] for lr in row]
        cells = [
            f"{100 * np.mean(valid[:, g]):.1f}" + (f" ×{chosen.count(lr)}" if lr in chosen else "")
            for g, lr in enumerate(learning_rates)
        ]
        lines.append(f"| {e['task']} | " + " | ".join(cells) + " |")
    lines.append("")
    for e in entries:
        names = [f"fold {k}" for k in e["folds"]] if e["folds"] else [""]
        runs = []
        for seed, row in zip(e["seeds"], e["learning_rate"]):
            folds = ", ".join(
                f"{n} {lr_text(lr)}" if n else lr_text(lr) for n, lr in zip(names, row)
            )
            runs.append(f"seed {seed}: {folds}")
        lines.append(f"- {e['task']}: " + "; ".join(runs))
    return lines


def render_table(reports: list[dict], names: list[str] | None = None) -> str:
    """Markdown comparison: one column per report (encoder), one row per task; best in bold."""
    names = names or [r["encoder"] for r in reports]
    if len(names) != len(reports):
        raise ValueError(f"{len(names)} names for {len(reports)} reports")
    by_task = [{e["task"]: e for e in r["tasks"]} for r in reports]
    tasks = list(dict.fromkeys(t for r in by_task for t in r))
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in tasks:
        entries = [r.get(t) for r in by_task]
        best = max((e["mean"] for e in entries if e), default=None)
        cells = ["–" if e is None else cell(e) for e in entries]
        if len(reports) > 1:
            cells = [f"**{c}**" if e and e["mean"] == best else c for c, e in zip(cells, entries)]
        metric = next(e["metric"] for e in entries if e)
        lines.append(f"| {t} ({metric}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_report(path: str) -> dict:
    """A report.json, or the folder holding one; UserError if there is none or it is not one."""
    full = cli.abspath(path)
    if not os.path.exists(full):
        raise cli.UserError(f"{path}: no such report folder")
    file = os.path.join(full, "report.json") if os.path.isdir(full) else full
    if not os.path.isfile(file):
        raise cli.UserError(
            f"{path}: no report.json in this folder; write one with `{COMMAND} ... --out {path}`"
        )
    try:
        with open(file, encoding="utf-8") as f:
            report = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise cli.UserError(f"{path}: not a probe report ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), list):
        raise cli.UserError(f"{path}: not a probe report (no task list)")
    return report
