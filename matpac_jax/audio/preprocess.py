r"""Audio folder -> float16 log-mel ArrayRecord shards, an index and a per-file report.

  python -m matpac_jax.audio.preprocess --input_dir DIR --output_dir OUT [--num_workers N] \
      [--min_frames 608] [--records_per_shard 1024] [--overwrite] \
      [--labels LABELS.csv [--classes audioset]] [--num_tasks N --task_index I | --finalize]

Every audio file under DIR (recursively; the extensions the installed libsndfile reads) is
decoded, made mono, resampled to 16 kHz and turned into a log-mel (`matpac_jax.audio.frontend`). Files
are assigned to shards in sorted order, `records_per_shard` inputs a shard, so a re-run on the
same OUT resumes: a shard whose sidecar `.json` exists is done and is not written again; an
unfinished shard (temporary name) is redone from scratch. Nothing a reader sees is ever half
written: shards, sidecars, `index.json` and `report.json` are written under a temporary name and
renamed. With `--labels` (a `path,labels` CSV, `matpac_jax/labels.py`) only the files the CSV
lists are read, and each record keeps the indices of its labels (`labels` in the shard entries
of `index.json`, the class list in `classes`): the input of multi-label fine-tuning. A bad file never stops the run: it is listed in `report.json` with `status: skipped`
and its `reason`, and never reaches a shard.

Many machines: `--num_tasks N --task_index I` (e.g. a SLURM array's SLURM_ARRAY_TASK_COUNT and
SLURM_ARRAY_TASK_ID) makes task I write shards I, I + N, I + 2N, ... into the same OUT, under a
lock of its own (`.lock-task-I-of-N`); the tasks may run at once, on any machines that share
OUT, each resumable like a single run. The task that finds every shard done writes the index;
`--finalize` writes it from the shards' sidecars whenever asked (it names the shards still
missing). The result is byte for byte that of a single run.

Buckets: DIR and OUT may be URLs (gs://bucket/audio, gs://bucket/mels; any scheme fsspec knows).
Each worker copies its file to a temporary local file to decode it; each shard is written to a
local temporary folder and uploaded whole (an object appears only once its upload ends), its
byte ranges and its sidecar after it; the lock is an object created with a precondition.

Relative paths are resolved against the current directory. At the end every run prints how many
inputs were skipped and why, grouped (`3 too_short: 198-606 frames < --min_frames 608`), then a
one-line summary. Exit status: 0 when at least one record was written; 1 when every input was
skipped (the run produced nothing: `index.json` then says `num_records: 0` with `mean` and `std`
null, never NaN); 2, with one `error:` line and nothing started, for a mistake in the command
(a missing or unwritable folder, a folder without audio files, a bad number, an OUT that holds
a run with other inputs or parameters, an OUT another preprocessing run is writing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent import futures

import numpy as np

from matpac_jax import cli, storage
from matpac_jax import labels as labels_lib
from matpac_jax.audio import frontend as audio
from matpac_jax.audio import shards
from matpac_jax.dirlock import LOCK_NAME, DirLock

PROG = "python -m matpac_jax.audio.preprocess"
PLAN_NAME = "plan.json"
SHARD_DIR = "shards"


def audio_extensions() -> tuple[str, ...]:
    """Lower-case extensions of the formats the installed libsndfile decodes."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top

    formats = {f.lower() for f in sf.available_formats()}
    ext = {"wav", "flac", "ogg", "opus", "aiff", "aif", "au", "w64", "caf"}
    if "mp3" in formats or "mpeg" in formats:
        ext.add("mp3")
    return tuple(sorted(ext))


def list_inputs(input_dir: str) -> list[str]:
    """Sorted relative paths of the audio files under `input_dir`.

    Raises:
      cli.UserError: `input_dir` is not a readable folder, or holds no audio file.
    """
    input_dir = cli.input_dir(input_dir, "--input_dir", url=True)
    extensions = audio_extensions()
    found = [
        p for p in storage.files_under(input_dir) if p.rsplit(".", 1)[-1].lower() in extensions
    ]
    if not found:
        raise cli.UserError(
            f"--input_dir {input_dir}: no audio files (extensions {', '.join(extensions)})"
        )
    return found


@dataclasses.dataclass(frozen=True)
class Job:
    """What every worker needs to turn one file into one record (picklable)."""

    input_dir: str
    front_end: audio.FrontEnd
    min_frames: int


def process_file(job: Job, relpath: str) -> dict:
    """Decodes one file into a float16 log-mel, or says why it is skipped.

    Returns:
      {"path", "status": "ok"|"skipped", "reason", "frames", "mel" (float16 or None),
       "sum", "sum_sq"} where the sums are float64 over the stored (rounded) values. A skip
      `reason` reads `KIND: DETAIL`; a too_short DETAIL reads `MEASURED UNIT < LIMIT`, which
      `skip_summary` groups on.
    """
    out = {"path": relpath, "status": "skipped", "reason": None, "frames": 0, "mel": None}
    fe = job.front_end
    try:
        with storage.local_copy(storage.join(job.input_dir, relpath)) as local:
            wave = audio.load_audio(local, fe.sample_rate)
        if wave.shape[0] < fe.min_samples:
            raise audio.AudioError(
                "too_short",
                f"{wave.shape[0]} samples < the front end's min_samples {fe.min_samples}",
            )
        frames = fe.num_frames(wave.shape[0])
        if frames < job.min_frames:
            raise audio.AudioError("too_short", f"{frames} frames < --min_frames {job.min_frames}")
        mel16 = audio.log_mel(wave, fe).astype(np.float16)
        if not np.isfinite(mel16).all():  # float16 overflow would be a front-end bug: keep it out
            raise audio.AudioError("non_finite", "the log-mel holds NaN/Inf values")
    except audio.AudioError as e:
        out["reason"] = f"{e.reason}: {e.detail}"
        return out
    except Exception as e:  # pylint: disable=broad-except
        # Any decoder failure we did not foresee is still one bad file, not a dead run.
        out["reason"] = f"unreadable: {type(e).__name__}: {e}"
        return out
    values = mel16.astype(np.float64)
    out.update(
        status="ok",
        frames=frames,
        mel=mel16,
        sum=float(values.sum()),
        sum_sq=float(np.square(values).sum()),
    )
    return out


def _group_key(reason: str) -> tuple[tuple[str, str, str], int | None]:
    """((kind, unit, limit), measured value) of a skip reason; unit and limit only where the
    reason is a comparison (too_short), so that files failing one limit group together."""
    kind, _, detail = (reason or "unknown").partition(":")
    measured, sep, limit = detail.strip().partition(" < ")
    number, _, unit = measured.partition(" ")
    if sep and number.isdigit():
        return (kind, unit, limit), int(number)
    return (kind, "", ""), None


def skip_summary(entries: list[dict]) -> list[str]:
    """Lines such as `1000 too_short: 606 frames < --min_frames 608 (e.g. a.wav)` from report
    entries ({"path", "status", "reason"}): one per skip kind (and limit), most frequent first."""
    groups: dict[tuple[str, str, str], list] = {}
    for e in entries:
        if e["status"] == "ok":
            continue
        key, value = _group_key(e["reason"])
        group = groups.setdefault(key, [0, [], e["path"]])
        group[0] += 1
        if value is not None:
            group[1].append(value)
    lines = []
    for (kind, unit, limit), (count, values, example) in sorted(
        groups.items(), key=lambda kv: (-kv[1][0], kv[0])
    ):
        what = kind
        if values:
            low, high = min(values), max(values)
            span = f"{low}" if low == high else f"{low}-{high}"
            what = f"{kind}: {span} {unit} < {limit}"
        lines.append(f"{count} {what} (e.g. {example})")
    return lines


def _process_star(args):
    return process_file(*args)


def _single_threaded_blas() -> None:
    """Pool initializer: one BLAS thread per worker (the workers are the parallelism; with
    OpenBLAS's default of one thread per core they oversubscribe the cores, 3x slower here)."""
    import threadpoolctl  # pylint: disable=g-import-not-at-top

    threadpoolctl.threadpool_limits(1)


def _shard_name(i: int, n: int) -> str:
    return f"{SHARD_DIR}/mels-{i:05d}-of-{n:05d}"


def write_shard(
    output_dir: str, name: str, results: list[dict], labels: dict[str, list[int]] | None = None
) -> dict:
    """Writes one shard's records and its sidecar (the shard's done-marker), both atomically.

    `labels` (relative path -> class indices) adds each record's labels to the sidecar."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    ok = [r for r in results if r["status"] == "ok"]
    shard_file = name + ".array_record"
    if ok:
        final = storage.join(output_dir, shard_file)
        # The writer needs a local file: on a bucket, one in a local folder, then uploaded.
        staging = tempfile.mkdtemp(prefix="matpac-shard-") if storage.is_url(final) else None
        tmp = os.path.join(staging, "shard.array_record") if staging else storage.temp_name(final)
        try:
            writer = array_record_module.ArrayRecordWriter(tmp, shards.WRITER_OPTIONS)
            for r in ok:
                writer.write(shards.encode(r["mel"]))
            writer.close()
            # For reads from a bucket; before the done-marker (the sidecar).
            shards.write_ranges(final, len(ok), written=tmp)
            storage.upload(tmp, final)
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
    sidecar = {
        "path": shard_file,
        "num_records": len(ok),
        "frames": [r["frames"] for r in ok],
        "sources": [r["path"] for r in ok],
        **({"labels": [labels[r["path"]] for r in ok]} if labels is not None else {}),
        "sum": float(sum(r["sum"] for r in ok)),
        "sum_sq": float(sum(r["sum_sq"] for r in ok)),
        "report": [
            {"path": r["path"], "status": r["status"], "reason": r["reason"], "frames": r["frames"]}
            for r in results
        ],
    }
    shards.write_json_atomic(storage.join(output_dir, name + ".json"), sidecar)
    return sidecar


def _check_plan(output_dir: str, plan: dict) -> None:
    """Refuses to resume into an OUT made from other inputs or parameters."""
    path = storage.join(output_dir, PLAN_NAME)
    if storage.exists(path):
        old = json.loads(storage.read_text(path))
        if old != plan:
            changed = sorted(k for k in plan if old.get(k) != plan[k])
            raise cli.UserError(
                f"--output_dir {output_dir}: holds a run with other {', '.join(changed)}; "
                "resuming would mix them: use a new --output_dir, or --overwrite to start afresh"
            )
    else:
        shards.write_json_atomic(path, plan)


def _clear(output_dir: str) -> None:
    for pattern in (PLAN_NAME, shards.INDEX_NAME, shards.REPORT_NAME, f"{SHARD_DIR}/*"):
        for p in storage.glob(storage.join(output_dir, pattern)):
            storage.remove(p)


def _start(
    stack: contextlib.ExitStack,
    output_dir: str,
    plan: dict,
    overwrite: bool,
    names: list[str],
    num_tasks: int = 1,
    task_index: int = 0,
) -> None:
    """Creates OUT, holds its lock or the task's (on `stack`), removes what an interrupted run
    of this task left of `names` (its shards), and records or checks the plan. A start that
    fails removes an OUT it created, so a refused run leaves no empty folder behind."""
    lock_name = LOCK_NAME if num_tasks == 1 else f"{LOCK_NAME}-task-{task_index}-of-{num_tasks}"
    with cli.removed_on_failure(output_dir):
        cli.make_dir(output_dir, "--output_dir")
        what = "preprocessing run" if num_tasks == 1 else f"preprocessing task {task_index}"
        stack.enter_context(DirLock(output_dir, what, name=lock_name))  # before any change
        if overwrite:
            _clear(output_dir)
        storage.makedirs(storage.join(output_dir, SHARD_DIR))
        # Left by an interrupted run of this task: never part of the output. Other tasks'
        # temporary files are theirs (they may be writing them now).
        patterns = [f"{n}.*.tmp-*" for n in names] if num_tasks > 1 else ["**/*.tmp-*"]
        for pattern in patterns:
            for stale in storage.glob(storage.join(output_dir, pattern)):
                storage.remove(stale)
        _check_plan(output_dir, plan)


def _missing(output_dir: str, names: list[str]) -> list[str]:
    """The shards of `names` whose sidecar (their done-marker) is not written yet (one listing,
    not a request a shard: a bucket holds thousands)."""
    done = storage.glob(storage.join(output_dir, SHARD_DIR, "*.json"))
    done = {f"{SHARD_DIR}/{os.path.basename(p).removesuffix('.json')}" for p in done}
    return [n for n in names if n not in done]


def finalize(output_dir: str, input_dir: str | None = None) -> dict:
    """Writes `index.json` and `report.json` of OUT from its plan and its shards' sidecars (the
    tasks' work, `--num_tasks`); cli.UserError naming the shards still missing."""
    output_dir = cli.input_dir(output_dir, "--output_dir", url=True)
    path = storage.join(output_dir, PLAN_NAME)
    if not storage.exists(path):
        raise cli.UserError(
            f"--output_dir {output_dir}: no {PLAN_NAME}: no preprocessing ran there"
        )
    plan = json.loads(storage.read_text(path))
    num_shards = -(-plan["num_inputs"] // plan["records_per_shard"])
    names = [_shard_name(i, num_shards) for i in range(num_shards)]
    missing = _missing(output_dir, names)
    if missing:
        raise cli.UserError(
            f"--finalize: {len(missing)} of {num_shards} shards are not done yet, e.g. "
            f"{', '.join(missing[:3])}: run (or wait for) the tasks that write them"
        )
    for name in names:  # shards made before the byte ranges were written beside them
        shard = storage.join(output_dir, name + ".array_record")
        if storage.exists(shard) and not storage.exists(
            storage.join(output_dir, name + shards.RANGES_SUFFIX)
        ):
            sidecar = json.loads(storage.read_text(storage.join(output_dir, name + ".json")))
            shards.write_ranges(shard, sidecar["num_records"])
    return _finalize(output_dir, names, plan, input_dir=input_dir)


def preprocess(
    input_dir: str,
    output_dir: str,
    *,
    num_workers: int = 0,
    min_frames: int = 608,
    records_per_shard: int = 1024,
    front_end: audio.FrontEnd = audio.FrontEnd(),
    overwrite: bool = False,
    progress: bool = True,
    labels_csv: str | None = None,
    classes: str | None = None,
    num_tasks: int = 1,
    task_index: int = 0,
) -> dict | None:
    """Runs (or resumes) preprocessing, or task `task_index` of `num_tasks`; returns the index
    written to `output_dir/index.json`, or None when a task leaves shards to other tasks.

    An index with `num_records` 0 (every input skipped) is returned, not raised (`main` exits 1).
    Raises cli.UserError for a bad folder or number, or an OUT holding another run or plan.
    """
    if records_per_shard < 1:
        raise cli.UserError(f"--records_per_shard {records_per_shard}: must be at least 1")
    if num_workers < 0:
        raise cli.UserError(f"--num_workers {num_workers}: must be at least 0")
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise cli.UserError(
            f"--task_index {task_index} of --num_tasks {num_tasks}: need 0 <= index < tasks"
        )
    if overwrite and num_tasks > 1:
        raise cli.UserError(
            "--overwrite with --num_tasks: one task would delete the others' shards; empty "
            "--output_dir first (or run one task with --overwrite)"
        )
    input_dir = cli.input_dir(input_dir, "--input_dir", url=True)
    output_dir = cli.output_dir(output_dir, "--output_dir", url=True)
    inputs = list_inputs(input_dir)
    label_plan, labels = {}, None
    if labels_csv is not None:
        inputs, labels, label_plan = _labelled_inputs(inputs, input_dir, labels_csv, classes)
    elif classes is not None:
        raise cli.UserError("--classes names the class list of --labels: give --labels too")
    plan = {
        "inputs_sha1": hashlib.sha1("\n".join(inputs).encode()).hexdigest(),
        "num_inputs": len(inputs),
        "records_per_shard": records_per_shard,
        "min_frames": min_frames,
        "front_end": front_end.to_dict(),
        **label_plan,
    }
    num_shards = -(-len(inputs) // records_per_shard)
    names = [_shard_name(i, num_shards) for i in range(num_shards)]
    mine = list(range(task_index, num_shards, num_tasks))
    with contextlib.ExitStack() as lock:
        _start(lock, output_dir, plan, overwrite, [names[i] for i in mine], num_tasks, task_index)
        missing = set(_missing(output_dir, [names[i] for i in mine]))
        todo = [i for i in mine if names[i] in missing]
        pending = [inputs[i * records_per_shard : (i + 1) * records_per_shard] for i in todo]
        job = Job(input_dir, front_end, min_frames)
        work = [(job, p) for files in pending for p in files]
        bar = cli.progress(
            len(inputs),
            initial=len(inputs) - len(work),
            unit="file",
            desc="preprocess",
            enabled=progress,
        )
        start = time.perf_counter()
        seconds = _run(work, todo, pending, names, output_dir, num_workers, bar, labels)
        bar.close()
        elapsed = time.perf_counter() - start
        missing = _missing(output_dir, names)
        index = None if missing else _finalize(output_dir, names, plan, input_dir=input_dir)
    if missing:
        print(
            f"task {task_index} of {num_tasks}: its {len(mine)} shards are done; "
            f"{len(missing)} of {num_shards} shards wait for the other tasks (the last task "
            f"to finish writes the index; or run the same command with --finalize)",
            file=sys.stderr,
        )
    if work and progress:
        print(
            f"preprocessed {len(work)} files ({seconds / 3600:.2f} h of audio) in "
            f"{elapsed:.1f} s: {len(work) / elapsed:.1f} files/s, "
            f"{seconds / max(elapsed, 1e-9):.0f}x real time",
            file=sys.stderr,
        )
    return index


def _labelled_inputs(inputs, input_dir, labels_csv, classes):
    """The inputs a labels CSV lists, {path: class indices} and the plan's label entries.

    Raises:
      cli.UserError: the CSV lists a file that is not an audio file under `input_dir`.
    """
    table = labels_lib.read_labels_csv(labels_csv)
    missing = sorted(set(table) - set(inputs))
    if missing:
        raise cli.UserError(
            f"--labels {labels_csv}: {len(missing)} of its {len(table)} paths are not audio "
            f"files under --input_dir {input_dir}, e.g. {missing[:3]} (paths are relative to "
            "--input_dir)"
        )
    ids, names = labels_lib.class_list(table, classes)
    position = {c: i for i, c in enumerate(ids)}
    labels = {path: sorted(position[x] for x in set(row)) for path, row in table.items()}
    left_out = len(inputs) - len(table)
    if left_out:
        print(
            f"--labels: {left_out} audio files under --input_dir are not in {labels_csv}: left out",
            file=sys.stderr,
        )
    digest = hashlib.sha1(json.dumps(sorted(labels.items())).encode()).hexdigest()
    plan = {"labels_sha1": digest, "classes": {"ids": ids, "names": names}}
    return [p for p in inputs if p in table], labels, plan


def _run(work, todo, pending, names, output_dir, num_workers, bar, labels=None) -> float:
    """Decodes `work` (in `num_workers` processes) and writes the shards `todo`; returns the
    seconds of audio that became records."""
    fe = work[0][0].front_end if work else audio.FrontEnd()
    with contextlib.ExitStack() as stack:
        if num_workers > 0:
            ctx = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ctx.Pool(num_workers, _single_threaded_blas))
            results = pool.imap(_process_star, work, chunksize=4)
        else:
            import threadpoolctl  # pylint: disable=g-import-not-at-top

            stack.enter_context(threadpoolctl.threadpool_limits(1))
            results = map(_process_star, work)
        skipped = seconds = 0.0
        for shard_id, files in zip(todo, pending):
            batch = []
            for _ in files:
                r = next(results)
                batch.append(r)
                skipped += r["status"] == "skipped"
                seconds += r["frames"] * fe.hop_length / fe.sample_rate
                bar.update(1)
                bar.set_postfix(skipped=int(skipped), refresh=False)
            write_shard(output_dir, names[shard_id], batch, labels)
    return seconds


def _finalize(output_dir: str, names: list[str], plan: dict, input_dir: str | None = None) -> dict:
    """Assembles `index.json` and `report.json` from the shard sidecars.

    With no frames at all, `mean` and `std` are null: NaN is not JSON, and a reader must not
    normalise by a made-up number.
    """
    paths = [storage.join(output_dir, n + ".json") for n in names]
    with futures.ThreadPoolExecutor(16 if storage.is_url(output_dir) else 1) as pool:
        sidecars = [json.loads(text) for text in pool.map(storage.read_text, paths)]
    report = [entry for s in sidecars for entry in s.pop("report")]
    count = sum(sum(s["frames"]) for s in sidecars) * plan["front_end"]["n_mels"]
    total, total_sq = sum(s.pop("sum") for s in sidecars), sum(s.pop("sum_sq") for s in sidecars)
    mean = total / count if count else None
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0))) if count else None
    ok = sum(r["status"] == "ok" for r in report)
    index = {
        "format_version": shards.FORMAT_VERSION,
        "dtype": "float16",
        "layout": "(n_mels, frames)",
        "input_dir": input_dir,
        "front_end": plan["front_end"],
        "min_frames": plan["min_frames"],
        "num_records": ok,
        "num_inputs": len(report),
        "num_skipped": len(report) - ok,
        "total_frames": sum(sum(s["frames"]) for s in sidecars),
        "mean": mean,
        "std": std,
        "shards": sidecars,
    }
    if "classes" in plan:  # --labels: each shard entry holds its records' label indices
        index["classes"] = plan["classes"]
    shards.write_json_atomic(
        storage.join(output_dir, shards.REPORT_NAME),
        {"num_inputs": len(report), "num_ok": ok, "num_skipped": len(report) - ok, "files": report},
    )
    shards.write_json_atomic(storage.join(output_dir, shards.INDEX_NAME), index)
    return index


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--input_dir", required=True, help="folder of audio files (recursive)")
    p.add_argument("--output_dir", required=True, help="where shards, index and report go")
    p.add_argument(
        "--num_workers",
        type=cli.int_at_least(0),
        default=min(os.cpu_count() or 1, 8),
        help="decoding processes (0 = in this process)",
    )
    p.add_argument(
        "--min_frames",
        type=cli.int_at_least(1),
        default=608,
        help="skip clips with fewer log-mel frames (608 = the pretraining crop)",
    )
    p.add_argument("--records_per_shard", type=cli.int_at_least(1), default=1024)
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in OUT")
    p.add_argument(
        "--num_tasks",
        type=cli.int_at_least(1),
        default=1,
        help="split the shards over this many tasks (machines) writing into the same OUT",
    )
    p.add_argument(
        "--task_index",
        type=cli.int_at_least(0),
        default=0,
        help="this task: writes shards task_index, task_index + num_tasks, ...",
    )
    p.add_argument(
        "--finalize",
        action="store_true",
        help="only write index.json and report.json from the shards the tasks wrote",
    )
    p.add_argument(
        "--labels",
        help="a path,labels CSV (labels separated by ';', paths relative to --input_dir): read "
        "only its files and keep their labels",
    )
    p.add_argument(
        "--classes",
        choices=(labels_lib.AUDIOSET,),
        help="the class list of --labels (default: its sorted label names); audioset: the 527 "
        "AudioSet class ids (mids) in the reference's order",
    )
    return p


def _main(argv) -> int:
    args = _parser().parse_args(argv)
    # Resolved once, here: the messages, the index and the workers all see absolute paths.
    input_dir = cli.input_dir(args.input_dir, "--input_dir", url=True)
    output_dir = cli.output_dir(args.output_dir, "--output_dir", url=True)
    if args.finalize:
        if args.num_tasks > 1 or args.overwrite:
            raise cli.UserError("--finalize only reads the tasks' shards: give it no --num_tasks")
        index = finalize(output_dir, input_dir)
    else:
        index = preprocess(
            input_dir,
            output_dir,
            num_workers=args.num_workers,
            min_frames=args.min_frames,
            records_per_shard=args.records_per_shard,
            overwrite=args.overwrite,
            labels_csv=args.labels,
            classes=args.classes,
            num_tasks=args.num_tasks,
            task_index=args.task_index,
        )
    if index is None:  # a task whose shards are done while others still run
        return 0
    report = json.loads(storage.read_text(storage.join(output_dir, shards.REPORT_NAME)))["files"]
    print_summary(index, report, output_dir)
    if not index["num_records"]:
        print(
            f"{PROG}: error: nothing written: all {index['num_inputs']} inputs were skipped "
            "(reasons above)",
            file=sys.stderr,
        )
        return 1
    return 0


def print_summary(index: dict, report: list[dict], output_dir: str) -> None:
    """The skip reasons, grouped, then the one-line summary of the run (stdout)."""
    lines = skip_summary(report)
    head = f"skipped {index['num_skipped']} of {index['num_inputs']} inputs"
    print(head + (" (every file and its reason: report.json):" if lines else ""))
    for line in lines:
        print(f"  {line}")
    stats = "no frames"
    if index["mean"] is not None:
        stats = f"corpus mean {index['mean']:.3f}, std {index['std']:.3f}"
    print(
        f"{index['num_inputs']} inputs: {index['num_records']} written, "
        f"{index['num_skipped']} skipped -> {output_dir}/index.json, "
        f"{output_dir}/report.json ({stats})"
    )


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
