"""Linear-probe evaluation of an encoder on labelled audio tasks (DESIGN.md section 8).

Usage::

    python -m matpac_jax.probe --encoder SPEC --task_csv T.csv [--task_csv U.csv ...] --out OUT
        [--clip_seconds S] [--seeds 3] [--audio_root DIR] [--cache DIR] [--multilabel] [--lr 3e-5]
    python -m matpac_jax.probe table OUT1 OUT2 ... [--names A B ...] [--out FILE]

SPEC is what `matpac_jax.inference.Encoder.load` takes (an export dir, a training workdir,
`random`, `random:VARIANT`) or `logmel` for the log-mel baseline. A task CSV has the header
`path,label,split` (split in train/valid/test) or `path,label,fold` (each fold in turn is the
test set); `;` in a label makes the task multi-label. Audio paths are relative to `--audio_root`,
else to the CSV's folder, else to its parent (the demo corpus's `DIR/tasks/*.csv` layout).

Every clip is loaded at 16 kHz and cut to its first S seconds or zero-padded at the end (EVAR
cuts test clips from the start, train and valid clips at a random offset; one deterministic crop
lets all splits share the cache). S defaults to the task's median duration rounded to 0.1 s.
Embeddings are cached in `OUT/cache` under a hash of the encoder, the audio files and S. The
classifier protocol is `probe_lib.evaluate` (see `docs/probe.md`). Writes `OUT/report.json`,
`OUT/report.md` and, for single-label tasks, `OUT/confusion_TASK.png` (test counts summed over
seeds and folds, rows normalised, true class down, predicted across).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np

from matpac_jax import probe_lib

SAMPLE_RATE = 16_000
EMBED_CHUNK = 64  # clips loaded and embedded per call: bounds memory, paces the progress bar
_CACHE_VERSION = 1
# Files in a training workdir that change while the encoder does not: left out of its fingerprint.
_VOLATILE = ("metrics.jsonl", "tensorboard", ".lock", "damaged_checkpoints")


def load_featurizer(spec: str):
    """`logmel` -> `LogMelBaseline()`, anything else -> `Encoder.load(spec)`."""
    from matpac_jax import inference  # pylint: disable=g-import-not-at-top

    return inference.LogMelBaseline() if spec == "logmel" else inference.Encoder.load(spec)


# ---------------------------------------------------------------------------------------------
# Tasks.


@dataclasses.dataclass
class Task:
    """One labelled task read from a CSV; `groups` holds each row's split or fold."""

    name: str
    csv: str
    paths: list[str]  # absolute
    labels: list[tuple[str, ...]]
    classes: list[str]
    multilabel: bool
    kfold: bool
    groups: list[str]

    def targets(self) -> np.ndarray:
        """(n,) class indices, or (n, C) float32 multi-hot for a multi-label task."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[row[0]] for row in self.labels], np.int64)
        y = np.zeros((len(self.labels), len(self.classes)), np.float32)
        for r, row in enumerate(self.labels):
            y[r, [index[c] for c in row]] = 1.0
        return y

    def folds(self) -> list[str]:
        keys = sorted(set(self.groups))
        return sorted(keys, key=int) if all(k.lstrip("-").isdigit() for k in keys) else keys

    def partitions(self) -> list[probe_lib.Partition]:
        """One partition per fold, or the train/valid/test split (valid None if absent)."""
        g = np.array(self.groups)
        if self.kfold:
            return [
                probe_lib.Partition(np.flatnonzero(g != k), None, np.flatnonzero(g == k))
                for k in self.folds()
            ]
        valid = np.flatnonzero(g == "valid")
        train, test = np.flatnonzero(g == "train"), np.flatnonzero(g == "test")
        return [probe_lib.Partition(train, valid if len(valid) else None, test)]


def read_task(csv_path: str, audio_root: str | None = None, multilabel: bool | None = None) -> Task:
    """Reads `path,label,split` or `path,label,fold`; `multilabel` None -> any `;` in a label."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    group = "fold" if "fold" in header else "split"
    if not {"path", "label", group} <= set(header):
        raise ValueError(f"{csv_path}: header {header} needs path,label,split or path,label,fold")
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    groups = [r[group] for r in rows]
    if group == "split":
        bad = sorted(set(groups) - {"train", "valid", "test"})
        if bad:
            raise ValueError(f"{csv_path}: split values {bad}; use train, valid or test")
        if "train" not in groups or "test" not in groups:
            raise ValueError(f"{csv_path}: needs both train and test rows")
    elif len(set(groups)) < 2:
        raise ValueError(f"{csv_path}: a k-fold task needs at least two folds")
    if multilabel is None:
        multilabel = any(";" in r["label"] for r in rows)
    if not multilabel and any(not r["label"] for r in rows):
        raise ValueError(f"{csv_path}: rows with an empty label; give every clip one")
    labels = [
        tuple(s for s in (p.strip() for p in r["label"].split(";")) if s)
        if multilabel
        else (r["label"],)
        for r in rows
    ]
    root = _audio_root(csv_path, [r["path"] for r in rows], audio_root)
    return Task(
        name=os.path.splitext(os.path.basename(csv_path))[0],
        csv=os.path.abspath(csv_path),
        paths=[os.path.abspath(os.path.join(root, r["path"])) for r in rows],
        labels=labels,
        classes=sorted({c for row in labels for c in row}),
        multilabel=multilabel,
        kfold=group == "fold",
        groups=groups,
    )


def _audio_root(csv_path: str, rel_paths: list[str], audio_root: str | None) -> str:
    """The folder the CSV's paths are relative to (see the module docstring)."""
    here = os.path.dirname(os.path.abspath(csv_path))
    candidates = [audio_root] if audio_root else [here, os.path.dirname(here)]
    for root in candidates:
        missing = [p for p in rel_paths if not os.path.exists(os.path.join(root, p))]
        if not missing:
            return root
    raise FileNotFoundError(
        f"{csv_path}: {len(missing)} of {len(rel_paths)} audio files not found, e.g. "
        f"{missing[0]!r} under "
        f"{' or '.join(candidates)}; pass --audio_root DIR (paths are relative to it)"
    )


def median_seconds(paths: list[str]) -> float:
    """Median duration from the file headers, rounded to 0.1 s (at least 0.1 s)."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top

    durations = []
    for p in paths:
        try:
            durations.append(sf.info(p).duration)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise ValueError(f"cannot read the header of {p}: {e}; pass --clip_seconds") from e
    return max(0.1, round(float(np.median(durations)), 1))


# ---------------------------------------------------------------------------------------------
# Embeddings.


def fix_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Keeps the first `num_samples` samples, zero-padding at the end if the clip is shorter."""
    out = np.zeros(num_samples, np.float32)
    n = min(len(wave), num_samples)
    out[:n] = wave[:n]
    return out


def _load_clip(path: str, num_samples: int) -> np.ndarray:
    from matpac_jax import audio  # pylint: disable=g-import-not-at-top

    try:
        return fix_length(audio.load_audio(path, SAMPLE_RATE), num_samples)
    except audio.AudioError as e:
        raise ValueError(f"cannot load {path}: {e}; fix or drop it from the task CSV") from e


def embed_clips(featurizer, paths: list[str], num_samples: int, desc: str = "") -> np.ndarray:
    """(n, D) float32 embeddings of fixed-length clips; loading overlaps with embedding."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    chunks = [paths[i : i + EMBED_CHUNK] for i in range(0, len(paths), EMBED_CHUNK)]
    out = []
    with (
        concurrent.futures.ThreadPoolExecutor(4) as pool,
        tqdm(total=len(paths), desc=desc, unit="clip") as bar,
    ):
        pending = [pool.submit(_load_clip, p, num_samples) for p in chunks[0]]
        for i in range(len(chunks)):
            waves = [f.result() for f in pending]
            if i + 1 < len(chunks):
                pending = [pool.submit(_load_clip, p, num_samples) for p in chunks[i + 1]]
            e = np.asarray(featurizer.embed(waves, SAMPLE_RATE), np.float32)
            if e.ndim != 2 or len(e) != len(waves) or not np.isfinite(e).all():
                raise ValueError(
                    f"the featurizer returned {e.shape} (finite: {np.isfinite(e).all()}) for "
                    f"{len(waves)} clips; expected finite (n, dim) embeddings"
                )
            out.append(e)
            bar.update(len(waves))
    return np.concatenate(out)


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def encoder_fingerprint(spec: str) -> str:
    """The spec, plus names, sizes and times of the files under it when it is a path."""
    if not os.path.exists(spec):
        return spec
    h = hashlib.sha256(os.path.abspath(spec).encode())
    for root, dirs, files in os.walk(spec):
        dirs[:] = sorted(d for d in dirs if d not in _VOLATILE and ".orbax-checkpoint-tmp" not in d)
        for name in sorted(set(files) - set(_VOLATILE)):
            path = os.path.join(root, name)
            h.update(f"{os.path.relpath(path, spec)}:{_stamp(path)};".encode())
    return h.hexdigest()


def cached_embeddings(task: Task, spec: str, clip_seconds: float, cache_dir: str, get_featurizer):
    """Embeddings of every row of `task`, from `cache_dir` when the same inputs were seen."""
    num_samples = round(clip_seconds * SAMPLE_RATE)
    key = f"{_CACHE_VERSION}|{encoder_fingerprint(spec)}|{num_samples}|{SAMPLE_RATE}|"
    h = hashlib.sha256((key + "".join(f"{p}:{_stamp(p)};" for p in task.paths)).encode())
    # Named by content only, so tasks over the same clips (the demo's timbre and pitch) share it.
    path = os.path.join(cache_dir, f"emb-{clip_seconds:g}s-{h.hexdigest()[:16]}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["embeddings"]
    emb = embed_clips(get_featurizer(), task.paths, num_samples, desc=f"embed {task.name}")
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, embeddings=emb, paths=np.array(task.paths))
    os.replace(path + ".tmp", path)
    return emb


# ---------------------------------------------------------------------------------------------
# Running and reporting.


def run(
    spec: str,
    task_csvs: list[str],
    out: str,
    *,
    clip_seconds: float | None = None,
    seeds: int = 3,
    audio_root: str | None = None,
    cache_dir: str | None = None,
    multilabel: bool | None = None,
    featurizer=None,
    cfg: probe_lib.ProbeConfig | None = None,
) -> dict:
    """Probes `spec` on every task and writes OUT/report.json, report.md and confusion PNGs.

    Args:
      featurizer: an object with `.embed(audio, sample_rate)`; None -> `load_featurizer(spec)`,
        loaded only if some embeddings are not cached.
      cfg: classifier hyperparameters; None -> the protocol's.
    """
    cfg = cfg or probe_lib.ProbeConfig()
    tasks = [read_task(t, audio_root, multilabel) for t in task_csvs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(
            f"task CSVs share a file name ({names}); rename them: the name is the task"
        )
    os.makedirs(out, exist_ok=True)
    cache_dir = cache_dir or os.path.join(out, "cache")
    loaded = [featurizer]

    def get_featurizer():
        if loaded[0] is None:
            loaded[0] = load_featurizer(spec)
        return loaded[0]

    entries = []
    for task in tasks:
        secs = clip_seconds or median_seconds(task.paths)
        emb = cached_embeddings(task, spec, secs, cache_dir, get_featurizer)
        start = time.time()
        result = probe_lib.evaluate(
            emb,
            task.targets(),
            task.partitions(),
            num_classes=len(task.classes),
            seeds=tuple(range(seeds)),
            cfg=cfg,
        )
        entry = {
            "task": task.name,
            "csv": task.csv,
            "encoder": spec,
            "metric": "mAP" if task.multilabel else "accuracy",
            "multilabel": task.multilabel,
            "classes": task.classes,
            "folds": task.folds() if task.kfold else None,
            "clip_seconds": secs,
            "embedding_dim": int(emb.shape[1]),
            "seeds": list(range(seeds)),
            **result,
            "probe_seconds": round(time.time() - start, 2),
        }
        if not task.multilabel:
            entry["confusion_png"] = f"confusion_{task.name}.png"
            with open(os.path.join(out, entry["confusion_png"]), "wb") as f:
                f.write(probe_lib.heatmap_png(np.array(result["confusion"])))
        entries.append(entry)
        print(f"{task.name}: {entry['metric']} {_cell(entry)} ({entry['probe_seconds']} s)")
    report = {"encoder": spec, "protocol": dataclasses.asdict(cfg), "tasks": entries}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(render_report(report))
    return report


def _cell(entry: dict) -> str:
    """`87.3 ± 1.2`: mean and 95% CI half-width in percent."""
    ci = "" if entry["ci95"] is None else f" ± {100 * entry['ci95']:.1f}"
    return f"{100 * entry['mean']:.1f}{ci}"


def render_report(report: dict) -> str:
    """Markdown: one row per task of one report."""
    lines = [
        f"# Linear probe: `{report['encoder']}`",
        "",
        "Scores in %: mean ± 95% CI over seeds (k-fold: a seed's score is its mean over folds).",
        "",
        "| task | metric | score | train / valid / test | clip (s) | dim | epochs (best) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report["tasks"]:
        folds = f" ({len(e['folds'])} folds)" if e["folds"] else ""
        sizes = " / ".join(f"{np.mean(e[k]):.0f}" for k in ("n_train", "n_valid", "n_test"))
        epochs = f"{np.mean(e['epochs_run']):.0f} ({np.mean(e['best_epoch']):.0f})"
        lines.append(
            f"| {e['task']}{folds} | {e['metric']} | {_cell(e)} | {sizes} | "
            f"{e['clip_seconds']:g} | {e['embedding_dim']} | {epochs} |"
        )
    return "\n".join(lines) + "\n"


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
        cells = ["–" if e is None else _cell(e) for e in entries]
        if len(reports) > 1:
            cells = [f"**{c}**" if e and e["mean"] == best else c for c, e in zip(cells, entries)]
        metric = next(e["metric"] for e in entries if e)
        lines.append(f"| {t} ({metric}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_report(path: str) -> dict:
    """A report.json, or the folder holding one."""
    file = os.path.join(path, "report.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"no report at {file}; run `python -m matpac_jax.probe` first")
    with open(file) as f:
        return json.load(f)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["table"]:
        p = argparse.ArgumentParser(
            prog="python -m matpac_jax.probe table",
            description="Markdown table of several probe reports: encoders x tasks.",
        )
        p.add_argument("reports", nargs="+", help="OUT folders (or report.json files)")
        p.add_argument("--names", nargs="+", help="column titles (default: encoder specs)")
        p.add_argument("--out", help="also write the table to this file")
        args = p.parse_args(argv[1:])
        table = render_table([load_report(r) for r in args.reports], args.names)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table)
        print(table, end="")
        return 0
    p = argparse.ArgumentParser(
        prog="python -m matpac_jax.probe",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Compare reports: python -m matpac_jax.probe table OUT1 OUT2 ...",
    )
    p.add_argument("--encoder", required=True, help="export dir, workdir, random[:VARIANT], logmel")
    p.add_argument("--task_csv", required=True, action="append", help="repeat for several tasks")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, PNGs")
    p.add_argument("--clip_seconds", type=float, help="default: each task's median duration")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds 0..N-1")
    p.add_argument("--audio_root", help="folder the CSV paths are relative to")
    p.add_argument("--cache", help="embedding cache folder (default OUT/cache)")
    p.add_argument("--multilabel", action="store_true", help="force multi-label (else: any ';')")
    p.add_argument(
        "--lr", type=float, default=3e-5, help="Adam learning rate (3e-5 is the protocol's)"
    )
    args = p.parse_args(argv)
    if args.seeds < 1 or args.lr <= 0 or (args.clip_seconds is not None and args.clip_seconds <= 0):
        p.error("--seeds must be >= 1, --lr and --clip_seconds > 0")
    run(
        args.encoder,
        args.task_csv,
        args.out,
        clip_seconds=args.clip_seconds,
        seeds=args.seeds,
        audio_root=args.audio_root,
        cache_dir=args.cache,
        multilabel=args.multilabel or None,
        cfg=probe_lib.ProbeConfig(learning_rate=args.lr),
    )
    print(f"-> {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
