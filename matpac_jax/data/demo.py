"""The demo corpus as ready-to-train shards: generated and preprocessed once into a cache.

Both steps are idempotent (the generator skips a complete corpus, preprocessing resumes), so
every main job can call this on start-up.
"""

from __future__ import annotations

import os

from matpac_jax.audio import preprocess, shards
from matpac_jax.data import demo_corpus


def pretraining_shards(cache_dir: str, num_workers: int = 2) -> str:
    """Returns the shard directory of the demo corpus's pretraining clips under `cache_dir`."""
    audio_dir = os.path.join(cache_dir, "audio")
    mels_dir = os.path.join(cache_dir, "mels")
    demo_corpus.generate(
        audio_dir, num_workers=num_workers, num_tagging=demo_corpus.DEFAULT_TAGGING
    )
    if not os.path.exists(os.path.join(mels_dir, shards.INDEX_NAME)):
        preprocess.preprocess(
            os.path.join(audio_dir, "pretrain"), mels_dir, num_workers=num_workers
        )
    return mels_dir


def tagging_shards(cache_dir: str, num_workers: int = 2) -> tuple[str, str]:
    """(train, eval) shard directories of the demo corpus's labelled tagging mixtures."""
    audio_dir = os.path.join(cache_dir, "audio")
    demo_corpus.generate(
        audio_dir, num_workers=num_workers, num_tagging=demo_corpus.DEFAULT_TAGGING
    )
    out = []
    for split in demo_corpus.TAGGING_SPLITS:
        mels_dir = os.path.join(cache_dir, f"tagging_{split}")
        if not os.path.exists(os.path.join(mels_dir, shards.INDEX_NAME)):
            preprocess.preprocess(
                os.path.join(audio_dir, "tagging", split),
                mels_dir,
                num_workers=num_workers,
                labels_csv=os.path.join(audio_dir, "tagging", f"{split}.csv"),
            )
        out.append(mels_dir)
    return out[0], out[1]
