"""The probe's inputs: task CSVs (`Task`, `read_task`) and clip embeddings with their cache.

A task CSV has the header `path,label,split` (split in train/valid/test) or `path,label,fold`
(each fold in turn is the test set); `;` in a label makes the task multi-label. A `labels`
column instead of `label` makes it multi-label whatever it holds (a clip may have no positive
class), and an optional `unknown` column lists, `;`-separated, the classes nobody annotated for
that clip (partial labels, as in OpenMIC-2018): they count in neither the probe's loss nor its
metrics. The multi-label builders of `matpac_jax.datasets` write this form. Audio paths are
relative to `--audio_root`, else to the CSV's folder, else to its parent (the demo corpus's
`DIR/tasks/*.csv` layout). Every clip is loaded at 16 kHz and cut to S seconds or zero-padded
at the end: from its start, or (`random_crop`, EVAR's protocol) the train and valid clips of a
split task at an offset drawn once per clip from `crop_seed` and the file's name, test clips
from their start. Embeddings are cached under a hash of the encoder, the audio files, S and
the crop.
Input mistakes raise `cli.UserError` (one line at the command line).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import os
import zlib

import numpy as np

from matpac_jax import cli, storage
from matpac_jax.audio import frontend as audio
from matpac_jax.evaluation import report as probe_report

# probe_lib (jax, sklearn) and audio are imported inside the functions that need them, so that a
# mistake in the inputs is answered before those slow imports.

SAMPLE_RATE = 16_000
EMBED_CHUNK = 64  # clips loaded and embedded per call: bounds memory, paces the progress bar
SPLITS = ("train", "valid", "test")
_CACHE_VERSION = 2  # 2: the cache also lists the clips that did not decode
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
    unknown: list[tuple[str, ...]] | None = None  # per row, classes not annotated (multi-label)

    def targets(self) -> np.ndarray:
        """(n,) class indices, or (n, C) float32 multi-hot for a multi-label task."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[row[0]] for row in self.labels], np.int64)
        y = np.zeros((len(self.labels), len(self.classes)), np.float32)
        for r, row in enumerate(self.labels):
            y[r, [index[c] for c in row]] = 1.0
        return y

    def known(self) -> np.ndarray | None:
        """(n, C) float32, 0 where a row's label of that class is unknown and 1 elsewhere; None
        when every label is known."""
        if not self.unknown or not any(self.unknown):
            return None
        index = {c: i for i, c in enumerate(self.classes)}
        mask = np.ones((len(self.labels), len(self.classes)), np.float32)
        for r, row in enumerate(self.unknown):
            mask[r, [index[c] for c in row]] = 0.0
        return mask

    def folds(self) -> list[str]:
        """The fold names in their natural order (numbers numerically)."""
        return probe_report.natural_order(set(self.groups))

    def partitions(self) -> list:
        """One `probe_lib.Partition` per fold, or the train/valid/test split (valid None if
        absent)."""
        from matpac_jax.evaluation import protocol as probe_lib  # pylint: disable=g-import-not-at-top (jax: only to split a task)

        g = np.array(self.groups)
        if self.kfold:
            return [
                probe_lib.Partition(np.flatnonzero(g != k), None, np.flatnonzero(g == k))
                for k in self.folds()
            ]
        valid = np.flatnonzero(g == "valid")
        train, test = np.flatnonzero(g == "train"), np.flatnonzero(g == "test")
        return [probe_lib.Partition(train, valid if len(valid) else None, test)]

    def crop_rows(self) -> set[int]:
        """The rows a random crop applies to (EVAR's): the train and valid clips of a split
        task; none of a k-fold task's, whose every clip is a test clip in one fold."""
        if self.kfold:
            return set()
        return {r for r, g in enumerate(self.groups) if g in ("train", "valid")}

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
    group, column = _check_columns(name, header)
    groups = [r[group] for r in rows]
    _check_groups(name, group, groups)
    if multilabel is None:
        multilabel = column == "labels" or any(";" in r[column] for r in rows)
    if not multilabel and any(not r[column] for r in rows):
        line = 2 + next(i for i, r in enumerate(rows) if not r[column])
        raise cli.UserError(f"{name}: line {line} has an empty label; give every clip one")
    labels = [_split_classes(r[column]) if multilabel else (r[column],) for r in rows]
    unknown = [_split_classes(r.get("unknown", "")) for r in rows] if multilabel else None
    if unknown:
        both = next((i for i, (l, u) in enumerate(zip(labels, unknown)) if set(l) & set(u)), None)
        if both is not None:
            raise cli.UserError(
                f"{name}: line {both + 2} lists {sorted(set(labels[both]) & set(unknown[both]))[0]!r}"
                " as both a label and unknown"
            )
    root = _audio_root(name, os.path.dirname(path), [r["path"] for r in rows], audio_root)
    return Task(
        name=os.path.splitext(os.path.basename(path))[0],
        csv=path,
        paths=[os.path.abspath(os.path.join(root, r["path"])) for r in rows],
        labels=labels,
        classes=sorted({c for row in labels + (unknown or []) for c in row}),
        multilabel=multilabel,
        kfold=group == "fold",
        groups=groups,
        unknown=unknown,
    )


def _split_classes(text: str) -> tuple[str, ...]:
    """`a;b` -> ("a", "b"), blanks dropped."""
    return tuple(s for s in (p.strip() for p in text.split(";")) if s)


def _read_rows(path: str) -> tuple[list[str], list[dict]]:
    """The stripped header and rows of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise cli.UserError(f"{shown(path)}: not a readable CSV text file ({e})") from e
    return header, rows


def _check_columns(name: str, header: list[str]) -> tuple[str, str]:
    """The grouping column (`split` or `fold`) and the label column (`label`, or `labels` for a
    multi-label task); UserError naming the required and found columns."""
    group = "fold" if "fold" in header else "split"
    column = "labels" if "labels" in header else "label"
    if not {"path", column, group} <= set(header):
        found = ", ".join(header) if header else "none (empty file)"
        raise cli.UserError(
            f"{name}: needs the columns path,label,split or path,label,fold (multi-label: "
            f"path,labels[,unknown],split); found: {found}"
        )
    return group, column


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
# Embeddings.


def fix_length(wave: np.ndarray, num_samples: int, offset: int = 0) -> np.ndarray:
    """`num_samples` samples from `offset` on, zero-padded at the end if the clip is shorter."""
    out = np.zeros(num_samples, np.float32)
    part = wave[offset : offset + num_samples]
    out[: len(part)] = part
    return out


def crop_offset(path: str, length: int, num_samples: int, crop_seed: int | None) -> int:
    """Where a clip of `length` samples is cut to `num_samples`: from its start (a short clip,
    or `crop_seed` None), or at EVAR's uniform offset in [0, length - num_samples), drawn once
    for this clip from `crop_seed` and its file name (the same at every run)."""
    if crop_seed is None or length <= num_samples:
        return 0
    name = zlib.crc32(os.path.basename(path).encode())
    return int(np.random.default_rng([crop_seed, name]).integers(0, length - num_samples))


def _load_clip(
    path: str, num_samples: int | None, crop_seed: int | None = None
) -> np.ndarray | audio.AudioError:
    """The clip at 16 kHz, cut or padded to `num_samples` (None: whole), or why it failed."""
    try:
        wave = audio.load_audio(path, SAMPLE_RATE)
    except audio.AudioError as e:
        return e
    if num_samples is None:
        return wave
    return fix_length(wave, num_samples, crop_offset(path, len(wave), num_samples, crop_seed))


def embed_clips(
    featurizer,
    paths: list[str],
    num_samples: int | None,
    desc: str = "",
    skip_bad: bool = False,
    random_rows: set[int] | None = None,
    crop_seed: int = 0,
) -> tuple[np.ndarray, dict[int, str]]:
    """(n_ok, D) float32 embeddings of the clips, loading overlapped with embedding.

    Each clip is cut or zero-padded to `num_samples`, or kept whole (None: the encoder chunks
    it); the rows in `random_rows` are cut at their random offset (`crop_offset`, `crop_seed`),
    the others from their start. A clip that does not decode raises `cli.UserError`, or with
    `skip_bad` is left out: the second value maps its row index to the reason (an
    `AudioError`'s), and the rows of the embeddings are the other clips, in order.
    """
    random_rows = random_rows or set()
    chunks = [range(i, min(i + EMBED_CHUNK, len(paths))) for i in range(0, len(paths), EMBED_CHUNK)]
    out, failed = [], {}
    bar = cli.progress(len(paths), desc=desc, unit="clip")

    def load(rows, pool):
        seeds = [crop_seed if r in random_rows else None for r in rows]
        return [pool.submit(_load_clip, paths[r], num_samples, s) for r, s in zip(rows, seeds)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = load(chunks[0], pool)
        for i in range(len(chunks)):
            loaded = [f.result() for f in pending]
            if i + 1 < len(chunks):
                pending = load(chunks[i + 1], pool)
            waves = []
            for j, wave in enumerate(loaded):
                if isinstance(wave, audio.AudioError):
                    path = paths[chunks[i][j]]
                    if not skip_bad:
                        raise cli.UserError(
                            f"cannot load {shown(path)}: {wave}; fix or drop it from the CSV"
                        ) from wave
                    failed[i * EMBED_CHUNK + j] = cli.one_line(wave)
                else:
                    waves.append(wave)
            if waves:
                e = np.asarray(featurizer.embed(waves, SAMPLE_RATE), np.float32)
                if e.ndim != 2 or len(e) != len(waves) or not np.isfinite(e).all():
                    raise ValueError(
                        f"the featurizer returned {e.shape} (finite: {np.isfinite(e).all()}) "
                        f"for {len(waves)} clips; expected finite (n, dim) embeddings"
                    )
                out.append(e)
            bar.update(len(loaded))
    bar.close()
    if not out:
        raise cli.UserError(f"none of the {len(paths)} clips could be loaded")
    return np.concatenate(out), failed


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _fingerprinted(rel: str) -> bool:
    """Whether a file under an encoder path counts in its fingerprint: not a log, a lock or an
    unfinished save (what a running trainer rewrites while the encoder stays the same)."""
    *folders, name = rel.split("/")
    if any(f in _VOLATILE or ".orbax-checkpoint-tmp" in f for f in folders):
        return False
    return name not in _VOLATILE and not name.startswith(".lock")


def encoder_fingerprint(spec: str) -> str:
    """The spec, plus names, sizes and times of the files under it when it is a path (or the
    objects' sizes and versions under a URL)."""
    if storage.is_url(spec):
        base = spec.rstrip("/")
        stamps = [(rel, stamp) for rel, stamp in storage.url_stamps(spec) if _fingerprinted(rel)]
    elif os.path.exists(spec):
        base = os.path.abspath(spec)
        rels = [rel for rel in storage.files_under(spec) if _fingerprinted(rel)]
        stamps = [(rel, _stamp(os.path.join(spec, rel))) for rel in rels]
    else:
        return spec
    h = hashlib.sha256(base.encode())
    for rel, stamp in stamps:
        h.update(f"{rel}:{stamp};".encode())
    return h.hexdigest()


def cache_file(
    task: Task,
    spec: str,
    clip_seconds: float | None,
    cache_dir: str,
    crop_seed: int | None = None,
) -> str:
    """Where the embeddings of `task` by `spec` at `clip_seconds` (None: whole clips) are cached;
    `crop_seed` (not None): its train and valid clips cut at random offsets (`crop_offset`)."""
    random = clip_seconds is not None and crop_seed is not None and bool(task.crop_rows())
    length = "whole" if clip_seconds is None else f"{clip_seconds:g}s"
    length += f"-crop{crop_seed}" if random else ""
    num_samples = None if clip_seconds is None else round(clip_seconds * SAMPLE_RATE)
    key = f"{_CACHE_VERSION}|{encoder_fingerprint(spec)}|{num_samples}|{SAMPLE_RATE}|"
    key += f"crop{crop_seed}|" if random else ""
    h = hashlib.sha256((key + "".join(f"{p}:{_stamp(p)};" for p in task.paths)).encode())
    # Named by content only, so tasks over the same clips (the demo's timbre and pitch) share it.
    return os.path.join(cache_dir, f"emb-{length}-{h.hexdigest()[:16]}.npz")


def cached_embeddings(
    task: Task,
    path: str,
    clip_seconds: float | None,
    featurizer,
    skip_bad: bool = False,
    crop_seed: int | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """(embeddings, {row: why it did not decode}) of `task`'s clips at `clip_seconds` (None:
    whole; `crop_seed`: random train/valid crops, as `cache_file`), read from `path`, or
    computed (`embed_clips`) and written there. Without `skip_bad` a clip that does not decode
    is an error and the dict is empty."""
    if os.path.exists(path):
        with np.load(path) as z:
            failed = zip(z["failed_rows"].tolist(), z["failed_why"].tolist())
            return z["embeddings"], dict(failed)
    num_samples = None if clip_seconds is None else round(clip_seconds * SAMPLE_RATE)
    emb, failed = embed_clips(
        featurizer,
        task.paths,
        num_samples,
        desc=f"embed {task.name}",
        skip_bad=skip_bad,
        random_rows=task.crop_rows() if crop_seed is not None else None,
        crop_seed=crop_seed or 0,
    )
    rows = sorted(failed)
    cli.make_dir(os.path.dirname(path))
    with open(path + ".tmp", "wb") as f:
        np.savez(
            f,
            embeddings=emb,
            paths=np.array(task.paths),
            failed_rows=np.array(rows, np.int64),
            failed_why=np.array([failed[r] for r in rows], str),
        )
    os.replace(path + ".tmp", path)
    return emb, failed
