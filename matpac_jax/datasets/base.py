"""What every dataset builder shares: clip listing, int16 encoding, the tfds schema, task CSVs.

A dataset module lists its clips from the official folder layout (`list_clips`, no audio is
decoded); the same list feeds both the tfds builder and the probe's task CSV, so the two can
never disagree about which file is in which split.

Audio is stored as int16 at 16 kHz: `round(clip(x, -1, 1) * 32768)`, clipped to the int16
range, which is soundfile's own convention, so 16-bit PCM sources at 16 kHz round-trip bit for
bit. `to_float` undoes it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from matpac_jax.audio import frontend as audio

SAMPLE_RATE = 16_000
SPLITS = ("train", "valid", "test")
# Files decoded at once while building: soundfile and soxr release the GIL.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


class ManualDirError(FileNotFoundError):
    """The manual_dir does not hold the official layout (missing folder, metadata or file)."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One labelled audio file of the official layout.

    Single-label datasets set `label`. Multi-label ones (`MultiLabelAudioBuilder`) leave it ""
    and set `labels`, the positive classes (possibly none), and `unknown`, the classes nobody
    annotated for this clip (partial labels: neither positive nor negative).
    """

    path: Path  # absolute
    rel: str  # relative to manual_dir, POSIX separators: the example key and `path` feature
    label: str
    split: str  # tfds split name: "train" / "valid" / "test" or "fold1" ... "foldK"
    labels: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    def classes(self) -> tuple[str, ...]:
        """Every class name the clip refers to."""
        return (self.label,) if self.label else self.labels + self.unknown


def make_clip(
    manual_dir: Path,
    path: Path,
    label: str,
    split: str,
    labels: Sequence[str] = (),
    unknown: Sequence[str] = (),
) -> Clip:
    """Clip of `path` (inside `manual_dir`) with its relative name filled in."""
    path = Path(path).absolute()
    rel = path.relative_to(manual_dir.absolute()).as_posix()
    return Clip(path, rel, label, split, tuple(labels), tuple(unknown))


def encode(wave: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 (soundfile's scale: 16-bit PCM round-trips exactly)."""
    return np.clip(np.round(np.clip(wave, -1.0, 1.0) * 32768.0), -32768, 32767).astype(np.int16)


def to_float(pcm: np.ndarray) -> np.ndarray:
    """Stored int16 audio -> float32 in [-1, 1), as `matpac_jax.audio.frontend.load_audio` returns it."""
    return np.asarray(pcm, np.float32) / 32768.0


def find_root(manual_dir: Path, candidates: Sequence[str], marker: str, instructions: str) -> Path:
    """First `manual_dir/candidate` that holds `marker` (archives unpack with or without a folder).

    Raises:
        ManualDirError: none does.
    """
    for name in candidates:
        if (manual_dir / name / marker).exists():
            return manual_dir / name
    tried = ", ".join(str(manual_dir / c / marker) for c in candidates)
    raise ManualDirError(f"none of {tried} exists.\n{instructions}")


def require(path: Path, instructions: str) -> Path:
    """`path` if it exists, else a ManualDirError naming it and how to get the data."""
    if not path.exists():
        raise ManualDirError(f"{path} does not exist.\n{instructions}")
    return path


def check_files_exist(clips: Sequence[Clip], instructions: str, progress: bool = False) -> None:
    """Raises ManualDirError naming the first missing files when the copy is incomplete."""
    bar = tqdm.tqdm(clips, desc="checking files", unit=" files", disable=not progress)
    missing = [c.path for c in bar if not c.path.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        raise ManualDirError(
            f"{len(missing)} of {len(clips)} files the metadata lists are missing, e.g.\n  "
            f"{shown}\nThe copy is incomplete: re-extract the archive.\n{instructions}"
        )


def read_csv(path: Path, columns: Sequence[str], instructions: str) -> list[dict[str, str]]:
    """Rows of a metadata CSV, after checking it exists and has `columns`."""
    with open(require(path, instructions), newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        lacking = [c for c in columns if c not in (reader.fieldnames or [])]
        if lacking:
            raise ManualDirError(
                f"{path} lacks the columns {lacking} (has {reader.fieldnames}): not the official "
                f"metadata file.\n{instructions}"
            )
        return list(reader)


def _decode(path: Path) -> np.ndarray | audio.AudioError:
    """int16 16 kHz audio of `path`, or the AudioError that says why it cannot be read."""
    try:
        return encode(audio.load_audio(path, SAMPLE_RATE))
    except audio.AudioError as e:
        return e


def _decoded(clips: Sequence[Clip]) -> Iterator[tuple[Clip, np.ndarray | audio.AudioError]]:
    """(clip, audio or error) in order, decoding a bounded window of files in threads."""
    window = 4 * _DECODE_THREADS  # bounded so that a large split never sits decoded in memory
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
        pending = collections.deque()
        for clip in clips:
            pending.append((clip, pool.submit(_decode, clip.path)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


class AudioClassificationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder of a labelled audio dataset read from a local copy of its official layout.

    Subclasses set the class attributes below and implement `list_clips`; their module
    docstring is the dataset description. Features: `audio` (int16, 16 kHz, mono), `label`
    (ClassLabel), `path` (file relative to manual_dir) and `fold` (int, k-fold datasets) or
    `split` (text: train / valid / test).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    CLASS_NAMES: tuple[str, ...] = ()
    NUM_FOLDS = 0  # > 0: one tfds split per official fold, "fold1" ... ; 0: train/valid/test
    MULTILABEL = False  # True: `MultiLabelAudioBuilder`
    HOMEPAGE = ""
    CITATION = ""

    @classmethod
    def splits(cls) -> tuple[str, ...]:
        """tfds split names of the official protocol."""
        if cls.NUM_FOLDS:
            return tuple(f"fold{k}" for k in range(1, cls.NUM_FOLDS + 1))
        return SPLITS

    @classmethod
    def class_names(
        cls, config: str | None = None, manual_dir: Path | None = None
    ) -> tuple[str, ...]:
        """Label names in class-index order (a builder with configs may vary them; one whose
        vocabulary ships with the data reads it from `manual_dir`)."""
        return cls.CLASS_NAMES

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[Clip]:
        """Every clip of the official protocol, from the layout under `manual_dir`.

        Raises:
            ManualDirError: the layout is missing or incomplete.
        """
        raise NotImplementedError

    @classmethod
    def checked_clips(
        cls, manual_dir: str | os.PathLike, config: str | None = None, progress: bool = False
    ) -> list[Clip]:
        """`list_clips`, after checking labels, splits and that every file is there."""
        manual_dir = Path(manual_dir)
        if not manual_dir.is_dir():
            raise ManualDirError(
                f"manual_dir {manual_dir} is not a folder.\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        clips = cls.list_clips(manual_dir, config)
        names, splits = set(cls.class_names(config, manual_dir)), cls.splits()
        for clip in clips:
            for label in clip.classes():
                if label not in names:
                    raise ManualDirError(
                        f"{clip.path}: unknown label {label!r}; expected one of "
                        f"{sorted(names)}. Is this the official release?"
                    )
            if clip.split not in splits:
                raise ManualDirError(f"{clip.path}: split {clip.split!r} is not one of {splits}")
        empty = sorted(set(splits) - {c.split for c in clips}, key=splits.index)
        if empty:
            raise ManualDirError(
                f"no clips in split(s) {empty} under {manual_dir}: the copy is incomplete.\n"
                f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        check_files_exist(clips, cls.MANUAL_DOWNLOAD_INSTRUCTIONS, progress)
        return clips

    def _info(self) -> tfds.core.DatasetInfo:
        names = self.class_names(self.builder_config_name)
        place = (
            {"fold": tfds.features.Tensor(shape=(), dtype=np.int64)}
            if self.NUM_FOLDS
            else {"split": tfds.features.Text()}
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,  # layout and protocol
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "label": tfds.features.ClassLabel(names=names),
                    "path": tfds.features.Text(),
                    **place,
                }
            ),
            supervised_keys=("audio", "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(sample_rate=SAMPLE_RATE, int16_scale=32768),
        )

    def _split_generators(self, dl_manager):
        clips = self.checked_clips(dl_manager.manual_dir, self.builder_config_name)
        by_split = collections.defaultdict(list)
        for clip in clips:
            by_split[clip.split].append(clip)
        return {split: self._generate_examples(by_split[split]) for split in self.splits()}

    def _generate_examples(self, clips):
        skipped = []
        for clip, pcm in _decoded(clips):
            if isinstance(pcm, audio.AudioError):
                skipped.append(f"{clip.rel} ({pcm.reason})")
                continue
            yield clip.rel, self._example(clip, pcm)
        if skipped:
            # A bad file never stops a build; name it so that the count can be explained.
            logging.warning(
                "%s: skipped %d unreadable file(s): %s", self.name, len(skipped), ", ".join(skipped)
            )

    def _example(self, clip: Clip, pcm: np.ndarray) -> dict:
        """The stored features of one decoded clip."""
        where = {"fold": int(clip.split[4:])} if self.NUM_FOLDS else {"split": clip.split}
        return {"audio": pcm, "label": clip.label, "path": clip.rel, **where}


class MultiLabelAudioBuilder(AudioClassificationBuilder, skip_registration=True):
    """tfds builder of a multi-label audio dataset (tagging), read like the single-label ones.

    Features: `audio`, `path`, `split` as above; `labels`, int8 (C,) multi-hot over
    `class_names()` in the official order; `label_mask`, int8 (C,), 1 where the clip's label is
    known and 0 where nobody annotated that class (partial labels: `Clip.unknown`). The class
    names are in `info.metadata["class_names"]`: the columns come from the dataset's official
    vocabulary, never from the labels that one split happens to contain.
    """

    MULTILABEL = True
    NUM_CLASSES = 0  # > 0: the class count, for a vocabulary read from manual_dir (FSD50K)

    def _info(self) -> tfds.core.DatasetInfo:
        names = () if self.NUM_CLASSES else self.class_names(self.builder_config_name)
        size = self.NUM_CLASSES or len(names)
        features = tfds.features.FeaturesDict(
            {
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                "labels": tfds.features.Tensor(shape=(size,), dtype=np.int8),
                "label_mask": tfds.features.Tensor(shape=(size,), dtype=np.int8),
                "path": tfds.features.Text(),
                "split": tfds.features.Text(),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,  # layout and protocol
            features=features,
            supervised_keys=("audio", "labels"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(
                sample_rate=SAMPLE_RATE, int16_scale=32768, class_names=list(names)
            ),
        )

    def _split_generators(self, dl_manager):
        names = self.class_names(self.builder_config_name, Path(dl_manager.manual_dir))
        if self.NUM_CLASSES and len(names) != self.NUM_CLASSES:
            raise ManualDirError(
                f"{self.name}: the vocabulary has {len(names)} classes, expected "
                f"{self.NUM_CLASSES}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        self.info.metadata["class_names"] = list(names)
        return super()._split_generators(dl_manager)

    def _example(self, clip: Clip, pcm: np.ndarray) -> dict:
        names = self.info.metadata["class_names"]
        return {
            "audio": pcm,
            "labels": multi_hot(clip.labels, names),
            "label_mask": 1 - multi_hot(clip.unknown, names),
            "path": clip.rel,
            "split": clip.split,
        }


def multi_hot(labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """int8 (len(names),): 1 at each of `labels`."""
    out = np.zeros(len(names), np.int8)
    out[[list(names).index(label) for label in labels]] = 1
    return out


def write_task_csv(
    clips: Sequence[Clip], out_csv: str | os.PathLike, folds: bool, multilabel: bool = False
) -> int:
    """Writes the probe's task CSV: `path,label,fold` (fold 1..K) or `path,label,split`; for a
    multi-label dataset `path,labels,unknown,split`, classes joined by `;` (either may be empty).

    Paths are absolute, so the CSV can live anywhere. Returns the number of rows.
    """
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        group = "fold" if folds else "split"
        writer.writerow(
            ["path", "labels", "unknown", group] if multilabel else ["path", "label", group]
        )
        for c in clips:
            where = int(c.split[4:]) if folds else c.split
            if multilabel:
                writer.writerow([str(c.path), ";".join(c.labels), ";".join(c.unknown), where])
            else:
                writer.writerow([str(c.path), c.label, where])
    os.replace(tmp, out_csv)  # never leave a half-written CSV under the final name
    return len(clips)
