"""Linear-probe evaluation of an encoder on labelled audio tasks (docs/method.md section 8).

Usage::

    python -m matpac_jax.probe --encoder SPEC --task_csv T.csv [--task_csv U.csv ...] --out OUT
        [--clip_seconds S] [--seeds 3] [--audio_root DIR] [--cache DIR] [--multilabel] [--lr 3e-5]
    python -m matpac_jax.probe table OUT1 OUT2 ... [--names A B ...] [--out FILE]

SPEC is what `matpac_jax.inference.load_encoder` takes: an export folder, a training workdir,
`random[:VARIANT]` or `logmel`. A task CSV has the header `path,label,split` (split in
train/valid/test) or `path,label,fold` (each fold in turn is the test set); `;` in a label makes
the task multi-label. Audio paths are relative to `--audio_root`, else to the CSV's folder, else
to its parent (the demo corpus's `DIR/tasks/*.csv` layout).

Every clip is loaded at 16 kHz and cut to its first S seconds or zero-padded at the end; S
defaults to the task's median duration rounded to 0.1 s. Embeddings are cached in `OUT/cache`
under a hash of the encoder, the audio files and S. The classifier protocol is
`probe_lib.evaluate` (see `docs/probe.md`). Writes `OUT/report.json`, `OUT/report.md` and, for
single-label tasks, `OUT/confusion_TASK.png`. Data that make a score misleading (a class with
fewer than two training clips, a tested class never trained on, a classifier still improving at
the epoch cap) are warned about on stderr and listed under `warnings` in the report.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
import urllib.parse

import numpy as np

from matpac_jax import cli

# probe_lib (jax, sklearn) and inference are imported inside the functions that need them, so
# that a mistake in the inputs is answered before those slow imports.

PROG = "python -m matpac_jax.probe"
SAMPLE_RATE = 16_000
EMBED_CHUNK = 64  # clips loaded and embedded per call: bounds memory, paces the progress bar
SPLITS = ("train", "valid", "test")
_CACHE_VERSION = 1
_NAMED = 3  # missing files named in an error message; the rest are counted
# Files in a training workdir that change while the encoder does not: left out of its fingerprint.
_VOLATILE = ("metrics.jsonl", "tensorboard", ".lock", "damaged_checkpoints")


def shown(path: str) -> str:
    """`path` relative to the current directory when under it (short messages), else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------------------------------------
# Tasks.


@dataclasses.dataclass
class Task:
    """One labelled task read from a CSV; `groups` holds each row's split or fold."""

    name: str
    csv: str
    paths: list[str]  # absolute
    labels: list[tuple[str, ...]]
    classes: list[str]  # sorted: the class index order (training and `confusion` rows)
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
        from matpac_jax import probe_lib  # pylint: disable=g-import-not-at-top

        return probe_lib.natural_order(set(self.groups))

    def partitions(self) -> list:
        """One `probe_lib.Partition` per fold, or the train/valid/test split (valid None if
        absent)."""
        from matpac_jax import probe_lib  # pylint: disable=g-import-not-at-top

        g = np.array(self.groups)
        if self.kfold:
            return [
                probe_lib.Partition(np.flatnonzero(g != k), None, np.flatnonzero(g == k))
                for k in self.folds()
            ]
        valid = np.flatnonzero(g == "valid")
        train, test = np.flatnonzero(g == "train"), np.flatnonzero(g == "test")
        return [probe_lib.Partition(train, valid if len(valid) else None, test)]

    def partition_names(self) -> list[str]:
        """`fold K` per partition of a k-fold task; one empty name for a split task."""
        return [f"fold {k}" for k in self.folds()] if self.kfold else [""]


def read_task(csv_path: str, audio_root: str | None = None, multilabel: bool | None = None) -> Task:
    """Reads `path,label,split` or `path,label,fold`; `multilabel` None -> any `;` in a label.

    Raises:
      cli.UserError: the CSV is missing or malformed, or names audio files that do not exist.
    """
    path = cli.input_file(csv_path, what="task CSV")
    header, rows = _read_rows(path)
    name = shown(path)
    group = _check_columns(name, header)
    groups = [r[group] for r in rows]
    _check_groups(name, group, groups)
    if multilabel is None:
        multilabel = any(";" in r["label"] for r in rows)
    if not multilabel and any(not r["label"] for r in rows):
        line = 2 + next(i for i, r in enumerate(rows) if not r["label"])
        raise cli.UserError(f"{name}: line {line} has an empty label; give every clip one")
    labels = [
        tuple(s for s in (p.strip() for p in r["label"].split(";")) if s)
        if multilabel
        else (r["label"],)
        for r in rows
    ]
    root = _audio_root(name, os.path.dirname(path), [r["path"] for r in rows], audio_root)
    return Task(
        name=os.path.splitext(os.path.basename(path))[0],
        csv=path,
        paths=[os.path.abspath(os.path.join(root, r["path"])) for r in rows],
        labels=labels,
        classes=sorted({c for row in labels for c in row}),
        multilabel=multilabel,
        kfold=group == "fold",
        groups=groups,
    )


def _read_rows(path: str) -> tuple[list[str], list[dict]]:
    """The stripped header and rows of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise cli.UserError(f"{shown(path)}: not a readable CSV text file ({e})") from e
    return header, rows


def _check_columns(name: str, header: list[str]) -> str:
    """The grouping column, `split` or `fold`; UserError naming required and found columns."""
    group = "fold" if "fold" in header else "split"
    if not {"path", "label", group} <= set(header):
        found = ", ".join(header) if header else "none (empty file)"
        raise cli.UserError(
            f"{name}: needs the columns path,label,split or path,label,fold; found: {found}"
        )
    return group


def _check_groups(name: str, group: str, groups: list[str]) -> None:
    """Split names known and train and test present; or at least two folds."""
    if not groups:
        raise cli.UserError(f"{name}: no rows under the header")
    if group == "fold":
        if len(set(groups)) < 2:
            raise cli.UserError(f"{name}: a k-fold task needs at least two folds, found only one")
        return
    bad = sorted(set(groups) - set(SPLITS))
    if bad:
        line = 2 + next(i for i, g in enumerate(groups) if g in bad)
        raise cli.UserError(
            f"{name}: unknown split {', '.join(map(repr, bad))} (first at line {line}); "
            f"allowed: {', '.join(SPLITS)}"
        )
    for need in ("train", "test"):
        if need not in groups:
            raise cli.UserError(f"{name}: no {need} rows; a split task needs train and test rows")


def _audio_root(name: str, here: str, rel_paths: list[str], audio_root: str | None) -> str:
    """The folder the CSV's paths are relative to (see the module docstring)."""
    candidates = [cli.abspath(audio_root)] if audio_root else [here, os.path.dirname(here)]
    missing = {}
    for root in candidates:
        missing[root] = [p for p in rel_paths if not os.path.isfile(os.path.join(root, p))]
        if not missing[root]:
            return root
    root = min(candidates, key=lambda r: len(missing[r]))  # the likelier root: fewer missing
    first = ", ".join(repr(p) for p in missing[root][:_NAMED])
    more = f" and {len(missing[root]) - _NAMED} more" if len(missing[root]) > _NAMED else ""
    hint = "" if audio_root else "; pass --audio_root DIR (the CSV's paths are relative to it)"
    raise cli.UserError(
        f"{name}: {len(missing[root])} of {len(rel_paths)} audio files not found under "
        f"{' or '.join(map(shown, candidates))}: {first}{more}{hint}"
    )


def median_seconds(paths: list[str]) -> float:
    """Median duration from the file headers, rounded to 0.1 s (at least 0.1 s)."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top

    durations = []
    for p in paths:
        try:
            durations.append(sf.info(p).duration)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise cli.UserError(
                f"cannot read the header of {shown(p)}: {e}; fix the file or pass --clip_seconds"
            ) from e
    return max(0.1, round(float(np.median(durations)), 1))


# ---------------------------------------------------------------------------------------------
# Warnings about data that make a score misleading.


def data_warnings(task: Task) -> list[str]:
    """Classes with fewer than two training clips, or tested but never trained on, per fold."""
    from matpac_jax import probe_lib  # pylint: disable=g-import-not-at-top

    y = task.targets()
    onehot = y > 0 if task.multilabel else np.eye(len(task.classes), dtype=bool)[y]
    return probe_lib.class_warnings(onehot, task.partitions(), task.classes, task.partition_names())


def warn(task: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"{PROG}: warning: {task}: {message}", file=sys.stderr, flush=True)


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
        raise cli.UserError(f"cannot load {shown(path)}: {e}; fix or drop it from the CSV") from e


def embed_clips(featurizer, paths: list[str], num_samples: int, desc: str = "") -> np.ndarray:
    """(n, D) float32 embeddings of fixed-length clips; loading overlaps with embedding."""
    chunks = [paths[i : i + EMBED_CHUNK] for i in range(0, len(paths), EMBED_CHUNK)]
    out = []
    bar = cli.progress(len(paths), desc=desc, unit="clip")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
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
    bar.close()
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


def cache_file(task: Task, spec: str, clip_seconds: float, cache_dir: str) -> str:
    """Where the embeddings of `task` by `spec` at `clip_seconds` are cached."""
    num_samples = round(clip_seconds * SAMPLE_RATE)
    key = f"{_CACHE_VERSION}|{encoder_fingerprint(spec)}|{num_samples}|{SAMPLE_RATE}|"
    h = hashlib.sha256((key + "".join(f"{p}:{_stamp(p)};" for p in task.paths)).encode())
    # Named by content only, so tasks over the same clips (the demo's timbre and pitch) share it.
    return os.path.join(cache_dir, f"emb-{clip_seconds:g}s-{h.hexdigest()[:16]}.npz")


def cached_embeddings(task: Task, path: str, clip_seconds: float, featurizer) -> np.ndarray:
    """Embeddings of every row of `task`: read from `path`, or computed and written there."""
    if os.path.exists(path):
        with np.load(path) as z:
            return z["embeddings"]
    num_samples = round(clip_seconds * SAMPLE_RATE)
    emb = embed_clips(featurizer, task.paths, num_samples, desc=f"embed {task.name}")
    cli.make_dir(os.path.dirname(path))
    with open(path + ".tmp", "wb") as f:
        np.savez(f, embeddings=emb, paths=np.array(task.paths))
    os.replace(path + ".tmp", path)
    return emb


# ---------------------------------------------------------------------------------------------
# Running.


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
    cfg=None,
) -> dict:
    """Probes `spec` on every task and writes OUT/report.json, report.md and confusion PNGs.

    The task CSVs, audio files and encoder are checked before anything is written. If probing
    fails, OUT is removed when this run created it and it holds no embedding cache.

    Args:
      featurizer: an object with `.embed(audio, sample_rate)`; None ->
        `inference.load_encoder(spec)`, loaded only if some embeddings are not cached.
      cfg: a `probe_lib.ProbeConfig`, or a dict of fields overriding the protocol's; None -> the
        protocol's.

    Raises:
      cli.UserError: a bad input (task CSV, audio file, encoder spec, unwritable output).
    """
    out = cli.output_dir(out)
    cache_dir = cli.output_dir(cache_dir or os.path.join(out, "cache"))
    tasks = [read_task(t, audio_root, multilabel) for t in task_csvs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise cli.UserError(
            f"task CSVs share a file name ({', '.join(names)}): the name is the task"
        )
    secs = [clip_seconds or median_seconds(t.paths) for t in tasks]
    files = [cache_file(t, spec, s, cache_dir) for t, s in zip(tasks, secs)]
    if featurizer is None and not all(map(os.path.exists, files)):
        from matpac_jax import inference  # pylint: disable=g-import-not-at-top

        featurizer = inference.load_encoder(spec)
    # Warned once every input is known good, so a mistake is still answered by one line.
    warnings = {t.name: data_warnings(t) for t in tasks}
    for t in tasks:
        for w in warnings[t.name]:
            warn(t.name, w)
    embeddings = [cached_embeddings(*a, featurizer) for a in zip(tasks, files, secs)]

    from matpac_jax import probe_lib  # pylint: disable=g-import-not-at-top

    if not isinstance(cfg, probe_lib.ProbeConfig):
        cfg = probe_lib.ProbeConfig(**(cfg or {}))
    with cli.removed_on_failure(out):
        cli.make_dir(out)
        entries = []
        for task, emb, s in zip(tasks, embeddings, secs):
            entry = probe_task(task, emb, spec, s, seeds, cfg, out, warnings[task.name])
            print(f"{task.name}: {entry['metric']} {_cell(entry)} ({entry['probe_seconds']} s)")
            entries.append(entry)
        report = {"encoder": spec, "protocol": dataclasses.asdict(cfg), "tasks": entries}
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(render_report(report))
    return report


def probe_task(task, emb, spec, clip_seconds, seeds, cfg, out, warnings) -> dict:
    """The report entry of one task (its confusion PNG written to `out`)."""
    from matpac_jax import probe_lib  # pylint: disable=g-import-not-at-top

    start = time.time()
    try:
        result = probe_lib.evaluate(
            emb,
            task.targets(),
            task.partitions(),
            num_classes=len(task.classes),
            seeds=tuple(range(seeds)),
            cfg=cfg,
        )
    except probe_lib.DataError as e:
        raise cli.UserError(f"{task.name}: {e}") from e
    capped = probe_lib.cap_warnings(result, list(range(seeds)), task.partition_names(), cfg)
    for w in capped:
        warn(task.name, w)
    entry = {
        "task": task.name,
        "csv": task.csv,
        "encoder": spec,
        "metric": "mAP" if task.multilabel else "accuracy",
        "multilabel": task.multilabel,
        "classes": task.classes,
        "folds": task.folds() if task.kfold else None,
        "clip_seconds": clip_seconds,
        "embedding_dim": int(emb.shape[1]),
        "seeds": list(range(seeds)),
        **result,
        "probe_seconds": round(time.time() - start, 2),
        "warnings": warnings + capped,
    }
    if not task.multilabel:
        entry["confusion_png"] = f"confusion_{task.name}.png"
        runs = f"{seeds} seed{'s' * (seeds > 1)}" + (f" x {len(task.folds())} folds" * task.kfold)
        probe_lib.plot_confusion(
            np.array(result["confusion"]),
            task.classes,
            os.path.join(out, entry["confusion_png"]),
            title=f"{task.name}, encoder {spec}: {entry['metric']} {_cell(entry)} %\n"
            f"test counts summed over {runs}",
        )
    return entry


# ---------------------------------------------------------------------------------------------
# Reports.


def _cell(entry: dict) -> str:
    """`87.3 ± 1.2`: mean and 95% CI half-width in percent."""
    ci = "" if entry["ci95"] is None else f" ± {100 * entry['ci95']:.1f}"
    return f"{100 * entry['mean']:.1f}{ci}"


def render_report(report: dict) -> str:
    """Markdown: one row per task, then the warnings and the confusion matrices."""
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
    """A report.json, or the folder holding one; UserError if there is none or it is not one."""
    full = cli.abspath(path)
    if not os.path.exists(full):
        raise cli.UserError(f"{path}: no such report folder")
    file = os.path.join(full, "report.json") if os.path.isdir(full) else full
    if not os.path.isfile(file):
        raise cli.UserError(
            f"{path}: no report.json in this folder; write one with `{PROG} ... --out {path}`"
        )
    try:
        with open(file, encoding="utf-8") as f:
            report = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise cli.UserError(f"{path}: not a probe report ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), list):
        raise cli.UserError(f"{path}: not a probe report (no task list)")
    return report


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        PROG, __doc__, epilog=f"Compare reports: {PROG} table OUT1 OUT2 ... (see table --help)"
    )
    p.add_argument("--encoder", required=True, help="export dir, workdir, random[:VARIANT], logmel")
    p.add_argument("--task_csv", required=True, action="append", help="repeat for several tasks")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, PNGs")
    p.add_argument("--clip_seconds", type=float, help="default: each task's median duration")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds 0..N-1")
    p.add_argument("--audio_root", help="folder the CSV paths are relative to")
    p.add_argument("--cache", help="embedding cache folder (default OUT/cache)")
    p.add_argument("--multilabel", action="store_true", help="force multi-label (else: any ';')")
    p.add_argument("--lr", type=float, default=3e-5, help="Adam learning rate (protocol: 3e-5)")
    return p


def _check_numbers(args) -> None:
    if args.seeds < 1:
        raise cli.UserError(f"--seeds {args.seeds}: must be at least 1")
    if not args.lr > 0:
        raise cli.UserError(f"--lr {args.lr:g}: must be greater than 0")
    if args.clip_seconds is not None and not args.clip_seconds > 0:
        raise cli.UserError(f"--clip_seconds {args.clip_seconds:g}: must be greater than 0")


def _probe_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check_numbers(args)
    # Every path made absolute and checked here, before the slow imports and any embedding.
    task_csvs = [cli.input_file(t, "--task_csv", what="task CSV") for t in args.task_csv]
    audio_root = args.audio_root and cli.input_dir(args.audio_root, "--audio_root")
    out = cli.output_dir(args.out, "--out")
    cache = args.cache and cli.output_dir(args.cache, "--cache")
    run(
        args.encoder,
        task_csvs,
        out,
        clip_seconds=args.clip_seconds,
        seeds=args.seeds,
        audio_root=audio_root,
        cache_dir=cache,
        multilabel=args.multilabel or None,
        cfg={"learning_rate": args.lr},
    )
    print(f"-> {shown(os.path.join(out, 'report.md'))}")
    return 0


def _table_main(argv: list[str]) -> int:
    p = cli.ArgumentParser(f"{PROG} table", "Markdown table of probe reports: encoders x tasks.")
    p.add_argument("reports", nargs="+", help="OUT folders (or report.json files)")
    p.add_argument("--names", nargs="+", help="column titles (default: encoder specs)")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    out = args.out and cli.output_file(args.out, "--out")
    if args.names and len(args.names) != len(args.reports):
        raise cli.UserError(f"--names: {len(args.names)} names for {len(args.reports)} reports")
    table = render_table([load_report(r) for r in args.reports], args.names)
    if out:
        cli.make_dir(os.path.dirname(out))
        with open(out, "w") as f:
            f.write(table)
    print(table, end="")
    return 0


def _main(argv) -> int:
    argv = list(argv)
    return _table_main(argv[1:]) if argv[:1] == ["table"] else _probe_main(argv)


def main(argv=None) -> int:
    """`python -m matpac_jax.probe [table] ...`; returns the exit status."""
    return cli.run(_main, sys.argv[1:] if argv is None else list(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
