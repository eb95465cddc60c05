"""Speech Commands V2 (Warden 2018): 1-s 16 kHz spoken words, 35 word classes.

Layout (`speech_commands_v0.02.tar.gz` unpacked into manual_dir/speech_commands_v0.02; the
archive has no top-level folder, so unpacking straight into manual_dir also works)::

    speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav    35 word folders
    speech_commands_v0.02/validation_list.txt                 e.g. right/a69b9b3e_nohash_0.wav
    speech_commands_v0.02/testing_list.txt
    speech_commands_v0.02/_background_noise_/                 not a class: left out

Splits: the official `valid` (validation_list.txt), `test` (testing_list.txt) and `train`
(every other word clip): 84,843 / 9,981 / 11,005 clips, speaker-disjoint by the archive's hash.
"""

from __future__ import annotations

from pathlib import Path

from matpac_jax.datasets import base

CLASS_NAMES = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
)  # fmt: skip

INSTRUCTIONS = """\
Speech Commands V2 is read from a local copy. Download
http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz (the official release, see
https://www.tensorflow.org/datasets/catalog/speech_commands) and unpack it into
manual_dir/speech_commands_v0.02 (the archive has no top-level folder), so that
manual_dir/speech_commands_v0.02/testing_list.txt and .../yes/*.wav exist."""


def _read_list(path: Path) -> set[str]:
    """Entries (`word/file.wav`) of validation_list.txt or testing_list.txt."""
    with open(base.require(path, INSTRUCTIONS), encoding="utf-8-sig") as f:
        return {line.strip() for line in f if line.strip()}


class SpeechCommands(base.AudioClassificationBuilder):
    """Speech Commands V2, 35 words, official train / valid / test."""

    name = "matpac_speech_commands"
    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://arxiv.org/abs/1804.03209"
    CITATION = """@article{warden2018speech,
  title={Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition},
  author={Warden, Pete},
  journal={arXiv preprint arXiv:1804.03209},
  year={2018}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        root = base.find_root(
            manual_dir, ("speech_commands_v0.02", "."), "testing_list.txt", INSTRUCTIONS
        )
        held_out = {
            "valid": _read_list(root / "validation_list.txt"),
            "test": _read_list(root / "testing_list.txt"),
        }
        absent = [w for w in CLASS_NAMES if not (root / w).is_dir()]
        if absent:
            raise base.ManualDirError(
                f"{root} lacks the word folders {absent}: not a complete Speech Commands V2 "
                f"(v0.02, 35 words; v0.01 has 30).\n{INSTRUCTIONS}"
            )
        clips, listed = [], set()
        for word in CLASS_NAMES:
            for path in sorted((root / word).glob("*.wav")):
                entry = f"{word}/{path.name}"
                split = next((s for s, names in held_out.items() if entry in names), "train")
                listed.add(entry)
                clips.append(base.make_clip(manual_dir, path, word, split))
        for split, names in held_out.items():
            missing = sorted(names - listed)
            if missing:
                raise base.ManualDirError(
                    f"{len(missing)} files of the {split} list are missing from {root}, e.g. "
                    f"{missing[:3]}: the copy is incomplete.\n{INSTRUCTIONS}"
                )
        return clips
