"""ESC-50 (Piczak 2015): 2,000 5-s environmental clips, 50 classes, 5 official folds.

Layout (the GitHub archive `master.zip` unpacked into manual_dir)::

    ESC-50-master/audio/1-100032-A-0.wav ...   44.1 kHz mono
    ESC-50-master/meta/esc50.csv               filename,fold,target,category,esc10,src_file,take

Splits: `fold1` ... `fold5`, the `fold` column; the protocol is 5-fold cross-validation.
"""

from __future__ import annotations

from pathlib import Path

from matpac_jax.datasets import base

# Class-index (`target`) order of esc50.csv.
CLASS_NAMES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw",
)  # fmt: skip

INSTRUCTIONS = """\
ESC-50 is read from a local copy. Download https://github.com/karolpiczak/ESC-50/archive/master.zip
(the official release, https://github.com/karolpiczak/ESC-50) and unzip it into manual_dir, so
that manual_dir/ESC-50-master/meta/esc50.csv and manual_dir/ESC-50-master/audio/*.wav exist."""


class Esc50(base.AudioClassificationBuilder):
    """ESC-50 environmental sound classification, 5 official folds."""

    name = "matpac_esc50"
    CLASS_NAMES = CLASS_NAMES
    NUM_FOLDS = 5
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://github.com/karolpiczak/ESC-50"
    CITATION = """@inproceedings{piczak2015esc,
  title={{ESC}: Dataset for Environmental Sound Classification},
  author={Piczak, Karol J.},
  booktitle={Proceedings of the 23rd ACM International Conference on Multimedia},
  pages={1015--1018},
  year={2015}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        root = manual_dir / "ESC-50-master"
        rows = base.read_csv(
            root / "meta" / "esc50.csv", ("filename", "fold", "target", "category"), INSTRUCTIONS
        )
        clips = []
        for row in rows:
            target = int(row["target"])
            if row["category"] not in CLASS_NAMES or CLASS_NAMES.index(row["category"]) != target:
                raise base.ManualDirError(
                    f"esc50.csv row {row['filename']}: target {target} / category "
                    f"{row['category']!r} do not match the official class list"
                )
            path = root / "audio" / row["filename"]
            clips.append(
                base.make_clip(manual_dir, path, row["category"], f"fold{int(row['fold'])}")
            )
        return clips
