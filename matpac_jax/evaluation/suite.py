"""The papers' linear-probe table in one command: MATPAC++ Table 1's seven tasks.

Usage::

    python -m matpac_jax.evaluation.suite --encoder SPEC --data_root DIR --out OUT
        [--protocol evar|grid] [--clips evar|whole] [--seeds 3] [--tasks esc50,nsynth,...]
        [--crop fsd50k=7.64] [--crop_seed 0] [--mtt all|tagged] [--cache DIR]

DIR holds each dataset's official layout in a folder of its own (docs/datasets.md says what
goes in each): `openmic/`, `nsynth/`, `gtzan/`, `magnatagatune/`, `fsd50k/`, `esc50/`,
`urbansound8k/` (the other names in `FOLDERS` work too). Whichever it finds it runs; each
missing one is listed, not an error. A folder that is there but incomplete is an error, before
any embedding work.

For each task: the clips of the official protocol (the builders of `matpac_jax.datasets`,
written as `OUT/tasks/TASK.csv`), the papers' embedding (SPEC's last layer, the frequency
patches of each 16-frame step concatenated, 3,840-d for ViT-B, mean over the time steps, in the
encoder's precise 608-frame chunks) of each clip cut or zero-padded to its task's length in
EVAR (`EVAR_SECONDS`: `--clips evar`, the default; train and valid clips of a split task cut
at an offset drawn once per clip from `--crop_seed`, test clips from their start; `--clips
whole` embeds whole clips; `--crop TASK=S` sets one task's length), cached under `--cache` (default
`OUT/cache`) so that a second run, or one with a task added, embeds nothing again; then the
probe (`--protocol evar`, the papers' fixed learning rate, by default; `grid` chooses it on
validation) over `--seeds` seeds, with the official folds of ESC-50 and UrbanSound8K. A clip
that does not decode is left out and reported.

Writes `OUT/table.md`, `OUT/table.json` and `OUT/table.png` (our row, with 95% intervals,
beside the published MATPAC++, MATPAC and M2D rows, and the average over the tasks present),
plus the probe's own `OUT/report.json` / `report.md`. `--encoder logmel` gives the log-mel
baseline's row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from matpac_jax import cli
from matpac_jax.evaluation import probe as probe_cli
from matpac_jax.evaluation import report as probe_report
from matpac_jax.evaluation import tasks as probe_data
from matpac_jax.evaluation.tasks import shown

PROG = "python -m matpac_jax.evaluation.suite"

# The seven tasks in Table 1's column order: (key, column title, metric, dataset name).
TASKS = (
    ("openmic", "OpenMIC", "mAP", "openmic"),
    ("nsynth", "NSynth", "acc", "nsynth"),
    ("gtzan", "GTZAN", "acc", "gtzan"),
    ("magnatagatune", "MTT", "mAP", "magnatagatune"),
    ("fsd50k", "FSD50K", "mAP", "fsd50k"),
    ("esc50", "ESC-50", "acc", "esc50"),
    ("urbansound8k", "US8K", "acc", "urbansound8k"),
)
# The clip length of each task in the published protocol: EVAR's unit seconds (evar/ds_tasks.py)
# where EVAR has the task; OpenMIC's clips are all 10 s; MagnaTagATune's figure came through
# EVAR's MARBLE plugin, which embeds whole files (crop_to_length_in_sec=None): None, whole.
EVAR_SECONDS = {
    "openmic": 10.0,
    "nsynth": 4.0,
    "gtzan": 30.0,
    "magnatagatune": None,
    "fsd50k": 7.6358,
    "esc50": 5.0,
    "urbansound8k": 4.0,
}
# Folder names under --data_root, first found wins.
FOLDERS = {
    "openmic": ("openmic", "openmic-2018", "OpenMIC-2018"),
    "nsynth": ("nsynth", "NSynth"),
    "gtzan": ("gtzan", "GTZAN"),
    "magnatagatune": ("magnatagatune", "mtt", "MagnaTagATune"),
    "fsd50k": ("fsd50k", "FSD50K"),
    "esc50": ("esc50", "ESC-50"),
    "urbansound8k": ("urbansound8k", "UrbanSound8K", "us8k"),
}
# MATPAC++ (arXiv 2508.12709), Table 1, as printed: linear probe, percent (mAP for OpenMIC, MTT
# and FSD50K, accuracy otherwise), mean ± 95% CI over runs, in TASKS order; then the table's own
# average column. The first three rows are supervised models, the rest self-supervised.
_TABLE_1 = """
HTS-AT        | sup | 86.3 0.0 | 70.0 0.2 | 85.5 0.4 | 40.1 0.0 | 59.7 0.0 | 95.9 0.1 | 85.7 0.1 | 74.8
BEATs iter3+  | sup | 86.8 0.1 | 73.4 0.2 | 85.5 0.0 | 40.4 0.1 | 60.1 0.7 | 96.0 0.1 | 90.0 0.1 | 76.1
PaSST         | sup | 86.4 0.2 | 73.2 0.2 | 87.5 0.7 | 40.4 0.2 | 62.3 0.1 | 96.9 0.1 | 89.6 0.3 | 76.7
HuBERT        | ssl | 78.1 0.0 | 59.6 1.4 | 74.2 0.8 | 36.8 0.0 | 35.0 0.1 | 74.5 0.2 | 78.1 0.2 | 62.3
Data2vec      | ssl | 79.4 0.2 | 65.9 0.1 | 74.4 0.7 | 36.7 0.1 | 37.4 0.1 | 78.2 0.2 | 78.3 0.3 | 64.3
MAE-AST       | ssl | 79.6 0.0 | 73.5 0.3 | 65.9 0.8 | 37.2 0.1 | 42.7 0.0 | 84.6 0.2 | 82.6 0.1 | 66.6
Dasheng Base  | ssl | 81.2 0.1 | 73.5 0.1 | 79.1 1.0 | 39.9 0.0 | 45.3 0.0 | 87.1 0.1 | 84.8 0.2 | 70.1
ATST-Frame    | ssl | 83.2 0.0 | 70.3 1.4 | 80.3 0.9 | 39.3 0.1 | 46.6 0.1 | 87.6 0.1 | 83.6 0.0 | 70.1
BEATs iter3   | ssl | 83.5 0.0 | 74.2 0.1 | 80.0 0.4 | 39.0 0.0 | 49.4 0.0 | 88.9 0.1 | 86.1 0.2 | 71.6
Dasheng 0.6B  | ssl | 82.0 0.0 | 76.5 0.3 | 83.3 0.7 | 39.6 0.1 | 48.2 0.0 | 88.2 0.2 | 85.8 0.2 | 71.9
ATST-Clip     | ssl | 84.4 0.1 | 71.7 0.5 | 79.5 1.8 | 39.1 0.1 | 50.9 0.0 | 91.4 0.1 | 86.2 0.1 | 71.9
ASiT          | ssl | 85.2 0.1 | 77.0 0.3 | 81.5 0.5 | 40.6 0.1 | 49.9 0.1 | 87.1 0.4 | 88.9 0.1 | 72.9
M2D           | ssl | 84.8 0.0 | 76.2 0.6 | 84.3 1.3 | 40.6 0.1 | 53.4 0.1 | 92.1 0.4 | 88.5 0.3 | 74.3
MATPAC        | ssl | 85.5 0.0 | 76.2 0.3 | 85.5 0.6 | 41.1 0.0 | 55.6 0.0 | 93.0 0.0 | 89.7 0.3 | 75.2
MATPAC++      | ssl | 85.6 0.1 | 76.8 0.2 | 87.6 0.0 | 40.8 0.1 | 56.1 0.1 | 93.1 0.1 | 89.7 0.3 | 75.7
"""


def _published(text: str) -> dict[str, dict]:
    """{model: {"supervised", "scores" (7 means), "ci95" (7 half-widths), "avg" (the table's
    average column)}} from `_TABLE_1`."""
    rows = {}
    for line in text.strip().splitlines():
        name, kind, *cells, avg = (c.strip() for c in line.split("|"))
        pairs = [tuple(map(float, c.split())) for c in cells]
        rows[name] = {
            "supervised": kind == "sup",
            "scores": tuple(m for m, _ in pairs),
            "ci95": tuple(h for _, h in pairs),
            "avg": float(avg),
        }
    return rows


PUBLISHED = _published(_TABLE_1)
REFERENCE = "MATPAC++"  # our row is marked against this row's intervals
# The log-mel baseline's row: EVAR's fixed rate leaves its 160-d embeddings half-trained (pitch
# 14.7 against 87.3 under grid on the demo), so it is probed at the rate that suits it best.
BASELINE_PROTOCOL = "grid"


@dataclasses.dataclass
class Found:
    """A task whose data is under --data_root."""

    key: str
    dataset: str  # the datasets' name (magnatagatune/all with --mtt all)
    manual_dir: str
    task: probe_data.Task | None = None


def find_tasks(data_root: str, wanted: list[str], mtt: str) -> tuple[list[Found], list[str]]:
    """The wanted tasks with a folder under `data_root`, and the names of those without one."""
    found, missing = [], []
    for key in wanted:
        folder = next(
            (
                os.path.join(data_root, f)
                for f in FOLDERS[key]
                if os.path.isdir(os.path.join(data_root, f))
            ),
            None,
        )
        if folder is None:
            missing.append(key)
            continue
        dataset = "magnatagatune/all" if key == "magnatagatune" and mtt == "all" else key
        found.append(Found(key, dataset, folder))
    return found, missing


def write_tasks(found: list[Found], out: str) -> None:
    """Lists each task's clips from its official layout into OUT/tasks/KEY.csv and reads it back.

    Raises:
      cli.UserError: a folder that does not hold its dataset's complete layout.
    """
    from matpac_jax import datasets  # pylint: disable=g-import-not-at-top (tfds: after the checks)

    for f in found:
        csv_path = os.path.join(out, "tasks", f"{f.key}.csv")
        try:
            rows = datasets.write_task_csv(f.dataset, f.manual_dir, csv_path, progress=True)
        except datasets.ManualDirError as e:
            raise cli.UserError(
                f"{shown(f.manual_dir)}: not a complete {f.dataset} copy: "
                f"{cli.one_line(e).rstrip('.')} (the layouts: docs/datasets.md)"
            ) from e
        f.task = probe_data.read_task(csv_path)
        print(f"{f.key}: {rows} clips ({shown(csv_path)})", flush=True)


def without_rows(task: probe_data.Task, rows: dict) -> probe_data.Task:
    """`task` less the rows in `rows` (clips that did not decode)."""
    keep = [i for i in range(len(task.paths)) if i not in rows]
    pick = lambda values: None if values is None else [values[i] for i in keep]  # noqa: E731
    return dataclasses.replace(
        task,
        paths=pick(task.paths),
        labels=pick(task.labels),
        groups=pick(task.groups),
        unknown=pick(task.unknown),
    )


# ---------------------------------------------------------------------------------------------
# The table.


def mark(mean: float, reference: float, half: float) -> str:
    """Where `mean` lies against the interval reference ± half (its edges inside): "above",
    "within" or "below". Compared in millionths: 93.1 + 0.1 is 93.2, not 93.19999999999999."""
    mean, high, low = (round(v, 6) for v in (mean, reference + half, reference - half))
    if mean > high:
        return "above"
    return "below" if mean < low else "within"


def table(
    entries: dict[str, dict], spec: str, missing: list[str], protocol: str, clips: str = "evar"
) -> dict:
    """table.json's content: our row (percent, mean and 95% half-width per task, and where it
    lies against the MATPAC++ row's interval), every published row of Table 1 with its
    intervals, and the averages over the tasks present and over all seven (computed from the
    rows; `avg_published` is the table's own column)."""
    ours = {}
    for key, title, metric, _ in TASKS:
        e = entries.get(key)
        if e is not None:
            half = e["ci95"]
            ours[key] = {
                "mean": 100 * e["mean"],
                "ci95": None if half is None else 100 * half,
                "metric": metric,
                "n_test": int(np.sum(e["n_test"])),
                "skipped_clips": len(e.get("skipped", {})),
            }
            if e.get("clips"):
                ours[key]["clips"] = e["clips"]
            ref = PUBLISHED[REFERENCE]
            i = [k for k, *_ in TASKS].index(key)
            ours[key]["vs_" + REFERENCE] = mark(ours[key]["mean"], ref["scores"][i], ref["ci95"][i])
            if "auc_mean" in e:  # None where undefined (no known negative in a test class)
                auc = e["auc_mean"]
                ours[key]["roc_auc"] = None if auc is None or np.isnan(auc) else 100 * auc
    present = [k for k, *_ in TASKS if k in ours]
    published = {}
    keys = [k for k, *_ in TASKS]
    for name, p in PUBLISHED.items():
        row = dict(zip(keys, p["scores"]))
        published[name] = {
            "supervised": p["supervised"],
            "scores": row,
            "ci95": dict(zip(keys, p["ci95"])),
            "avg_present": float(np.mean([row[k] for k in present])) if present else None,
            "avg_all": float(np.mean(p["scores"])),
            "avg_published": p["avg"],
        }
    return {
        "encoder": spec,
        "protocol": protocol,
        "clips": clips,
        "columns": [{"key": k, "title": t, "metric": m} for k, t, m, _ in TASKS],
        "present": present,
        "missing": missing,
        "ours": {
            "scores": ours,
            "avg_present": float(np.mean([ours[k]["mean"] for k in present])) if present else None,
        },
        "published": published,
        "reference": REFERENCE,
        "source": "MATPAC++ (arXiv 2508.12709), Table 1",
    }


def render_table(t: dict) -> str:
    """table.md: the rows, the averages and what each figure is."""
    cols = [c["key"] for c in t["columns"]]
    titles = [c["title"] for c in t["columns"]]
    lines = [
        f"# Linear-probe table: `{t['encoder']}`",
        "",
        f"Protocol `{t['protocol']}` (docs/probe.md). Percent: accuracy, or mAP for OpenMIC, MTT "
        "and FSD50K. Ours: mean ± 95% CI over the classifier's seeds on fixed embeddings (ESC-50, "
        "US8K: a seed's score is its mean over the official folds), marked ↑ above, = within or "
        f"↓ below the {t['reference']} row's interval. Published: {t['source']}, mean ± 95% CI; "
        "(s): supervised. The averages are computed from the rows (the table prints its own, "
        "which agrees within 0.1).",
        "",
    ]
    lines += _protocol_notes(t)
    lines += [
        "| model | " + " | ".join(titles) + " | avg (tasks here) | avg (all 7) |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    ours = t["ours"]["scores"]
    cells = []
    for k in cols:
        s = ours.get(k)
        if s is None:
            cells.append("–")
        else:
            arrow = {"above": " ↑", "within": " =", "below": " ↓"}[s["vs_" + t["reference"]]]
            ci = "" if s["ci95"] is None else f" ± {s['ci95']:.1f}"
            cells.append(f"{s['mean']:.1f}{ci}{arrow}")
    avg = t["ours"]["avg_present"]
    complete = not t["missing"]
    lines.append(
        f"| **ours** (`{t['encoder']}`) | " + " | ".join(cells) + f" | {_num(avg)} | "
        f"{_num(avg) if complete else '–'} |"
    )
    for name, row in t["published"].items():
        values = " | ".join(f"{row['scores'][k]:.1f} ± {row['ci95'][k]:.1f}" for k in cols)
        shown_name = f"{name} (s)" if row["supervised"] else name
        lines.append(
            f"| {shown_name} | {values} | {_num(row['avg_present'])} | {row['avg_all']:.1f} |"
        )
    extra = []
    if t.get("clips") == "evar":
        extra.append(
            "Clips: each task's length in EVAR (OpenMIC 10 s, NSynth 4 s, GTZAN 30 s, MTT whole, "
            "FSD50K 7.6358 s, ESC-50 5 s, US8K 4 s), shorter ones zero-padded, train and valid "
            "clips cut at a random offset, test clips from the start (report.json: `clips`)."
        )
    else:
        extra.append("Clips: embedded whole (`--clips whole`), not EVAR's per-task lengths.")
    if t["missing"]:
        extra.append(f"Not found under --data_root: {', '.join(t['missing'])}.")
    aucs = [f"{k} {_num(ours[k]['roc_auc'])}" for k in cols if k in ours and "roc_auc" in ours[k]]
    if aucs:
        extra.append(f"Macro ROC-AUC of the multi-label tasks (ours): {', '.join(aucs)}.")
    skipped = [
        f"{k} {ours[k]['skipped_clips']}" for k in cols if ours.get(k, {}).get("skipped_clips")
    ]
    if skipped:
        extra.append(
            f"Clips left out because they do not decode: {', '.join(skipped)} (report.json)."
        )
    if extra:
        lines += [""] + extra
    lines += ["", "![every row with its 95% interval, per task](table.png)"]
    return "\n".join(lines) + "\n"


def _protocol_notes(t: dict) -> list[str]:
    """The lines that say when our row's protocol is not the published rows'."""
    if t["encoder"] == "logmel" and t["protocol"] == BASELINE_PROTOCOL:
        return [
            f"The log-mel baseline is probed under `{BASELINE_PROTOCOL}` (the learning rate "
            "chosen on validation), the protocol that gives it its best: EVAR's fixed 3e-5 "
            "leaves its 160-d embeddings half-trained. The published rows are EVAR's protocol.",
            "",
        ]
    if t["protocol"] == "grid":
        return [
            "Protocol `grid` chooses the learning rate on validation: not the published "
            "protocol (EVAR's fixed rate), so this row is not measured as the published ones.",
            "",
        ]
    return []


def _num(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def plot_table(t: dict, path: str) -> None:
    """One panel per task present and one for the average: every row of the table as a dot
    with its 95% interval (ours red, the published self-supervised rows blue, the supervised
    ones grey)."""
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    present = t["present"]
    titles = {c["key"]: c["title"] for c in t["columns"]}
    ours = t["ours"]["scores"]
    rows = [
        (name, "grey" if row["supervised"] else "tab:blue", row["scores"], row["ci95"], row)
        for name, row in t["published"].items()
    ]
    rows.append(("ours", "tab:red", {k: ours[k]["mean"] for k in present}, None, t["ours"]))
    panels = [*present, "avg"]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.9 * len(panels) + 1.6, 0.3 * len(rows) + 1.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    y = np.arange(len(rows))[::-1]
    for ax, key in zip(axes, panels):
        for yi, (_, color, scores, cis, row) in zip(y, rows):
            if key == "avg":
                value, err = row["avg_present"], 0.0
            else:
                value = scores[key]
                err = (cis or {}).get(key) or (ours[key]["ci95"] if cis is None else 0.0) or 0.0
            ax.errorbar(value, yi, xerr=err, fmt="o", color=color, ms=3.5, capsize=2)
        ax.set_title(titles.get(key, "avg (tasks here)"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(y, [name for name, *_ in rows], fontsize=7)
    fig.suptitle(
        f"linear probe (% ; mAP for OpenMIC, MTT, FSD50K), protocol {t['protocol']}: ours "
        f"({t['encoder']}) beside MATPAC++ Table 1, 95% CI",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Running.


def run(
    spec: str,
    data_root: str,
    out: str,
    *,
    wanted: list[str] | None = None,
    seeds: int = 3,
    protocol: str = "evar",
    crops: dict[str, float] | None = None,
    mtt: str = "all",
    cache_dir: str | None = None,
    featurizer=None,
    clips: str = "evar",
    crop_seed: int = 0,
) -> dict:
    """Runs the suite (module docstring); returns table.json's content."""
    crops = {**(EVAR_SECONDS if clips == "evar" else {}), **(crops or {})}
    seed = crop_seed if clips == "evar" else None  # random train/valid crops: EVAR's
    found, missing = find_tasks(data_root, wanted or [k for k, *_ in TASKS], mtt)
    if not found:
        names = ", ".join(f"{k}/" for k, *_ in TASKS)
        raise cli.UserError(
            f"--data_root {shown(data_root)}: none of the tasks' folders is there (expected "
            f"any of {names}; the layouts: docs/datasets.md)"
        )
    if missing:
        print(f"not found under {shown(data_root)}: {', '.join(missing)}", flush=True)
    if spec == "logmel" and protocol == "evar":  # the baseline at its best (BASELINE_PROTOCOL)
        print(f"--encoder logmel: probed under --protocol {BASELINE_PROTOCOL}", flush=True)
        protocol = BASELINE_PROTOCOL
    cfg = probe_cli.config(protocol)
    cache_dir = cache_dir or os.path.join(out, "cache")
    with cli.removed_on_failure(out):  # a wrong folder or encoder leaves nothing behind
        cli.make_dir(out)
        write_tasks(found, out)
        paths = [
            probe_data.cache_file(f.task, spec, crops.get(f.key), cache_dir, seed) for f in found
        ]
        if featurizer is None and not all(map(os.path.exists, paths)):
            from matpac_jax.inference import encoder as inference  # pylint: disable=g-import-not-at-top (jax: after the checks)

            featurizer = inference.load_encoder(spec)
    entries = {}
    for f, path in zip(found, paths):
        crop = crops.get(f.key)
        cached = os.path.exists(path)
        emb, failed = probe_data.cached_embeddings(
            f.task, path, crop, featurizer, skip_bad=True, crop_seed=seed
        )
        for row, why in sorted(failed.items()):
            probe_cli.warn(f.key, f"left out {shown(f.task.paths[row])}: {why}")
        task = without_rows(f.task, failed)
        warnings = probe_cli.data_warnings(task)
        entry = probe_cli.probe_task(task, emb, spec, crop, seeds, cfg, out, warnings)
        entry["skipped"] = {f.task.paths[r]: why for r, why in failed.items()}
        entry["clips"] = _clip_policy(crop, seed, f.task)
        entry["embeddings_cached"] = cached
        entries[f.key] = entry
        print(
            f"{f.key}: {entry['metric']} {probe_report.score_text(entry)} "
            f"({'cached' if cached else 'embedded'}, probe {entry['probe_seconds']} s)",
            flush=True,
        )
    report = {
        "encoder": spec,
        "protocol": probe_cli.protocol_record(cfg),
        "tasks": [entries[f.key] for f in found],
    }
    probe_report.write_report(out, report)
    result = table(entries, spec, missing, cfg.protocol, clips)
    with open(os.path.join(out, "table.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(render_table(result))
    plot_table(result, os.path.join(out, "table.png"))
    return result


def _clip_policy(seconds: float | None, crop_seed: int | None, task) -> str:
    """How the task's clips were cut, in words (report.json's `clips`)."""
    if seconds is None:
        return "whole clips"
    if crop_seed is None or not task.crop_rows():
        return f"{seconds:g} s from the start, shorter clips zero-padded"
    return (
        f"{seconds:g} s, shorter clips zero-padded; train and valid clips cut at a random offset "
        f"(crop seed {crop_seed}), test clips from the start"
    )


def _crops(values: list[str], known: list[str]) -> dict[str, float]:
    """`--crop TASK=SECONDS` (repeatable) as {task: seconds}."""
    out = {}
    for text in values:
        key, _, seconds = text.partition("=")
        if key not in known:
            raise cli.UserError(f"--crop {text}: unknown task {key!r}; tasks: {', '.join(known)}")
        try:
            out[key] = float(seconds)
        except ValueError:
            raise cli.UserError(f"--crop {text}: expected TASK=SECONDS, e.g. fsd50k=7.64") from None
        if not out[key] > 0:
            raise cli.UserError(f"--crop {text}: the seconds must be greater than 0")
    return out


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--encoder", required=True, help="export dir, workdir, random[:VARIANT], logmel")
    p.add_argument("--data_root", required=True, help="folder holding the datasets' folders")
    p.add_argument("--out", required=True, help="folder for table.md/.json/.png and the reports")
    p.add_argument(
        "--protocol",
        choices=("evar", "grid"),
        default="evar",
        help="evar (default): the papers' fixed lr 3e-5; grid: chosen on validation",
    )
    p.add_argument(
        "--clips",
        choices=("evar", "whole"),
        default="evar",
        help="evar (default): each task's EVAR length, random train/valid crops; whole clips",
    )
    p.add_argument(
        "--crop_seed",
        type=cli.int_at_least(0),
        default=0,
        help="the seed of the random train/valid crops (--clips evar)",
    )
    p.add_argument("--seeds", type=cli.int_at_least(1), default=3, help="classifier seeds 0..N-1")
    p.add_argument("--tasks", help="comma-separated subset of: " + ",".join(k for k, *_ in TASKS))
    p.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="TASK=SECONDS",
        help="cut or pad TASK's clips to SECONDS (default: EVAR's length, or whole clips)",
    )
    p.add_argument(
        "--mtt",
        choices=("all", "tagged"),
        default="all",
        help="MagnaTagATune clips: all 25,863 (default, as MARBLE's preprocessing behind the "
        "published figure) or those with a top-50 tag",
    )
    p.add_argument("--cache", help="embedding cache folder (default OUT/cache)")
    return p


def _main(argv) -> int:
    args = _parser().parse_args(argv)
    known = [k for k, *_ in TASKS]
    wanted = known
    if args.tasks:
        wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise cli.UserError(f"--tasks: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    crops = _crops(args.crop, known)
    data_root = cli.input_dir(args.data_root, "--data_root")
    out = cli.output_dir(args.out, "--out")
    cache = args.cache and cli.output_dir(args.cache, "--cache")
    start = time.time()
    run(
        args.encoder,
        data_root,
        out,
        wanted=wanted,
        seeds=args.seeds,
        protocol=args.protocol,
        crops=crops,
        mtt=args.mtt,
        cache_dir=cache,
        clips=args.clips,
        crop_seed=args.crop_seed,
    )
    print(f"-> {shown(os.path.join(out, 'table.md'))} ({time.time() - start:.0f} s)")
    return 0


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, sys.argv[1:] if argv is None else list(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
