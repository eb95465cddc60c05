r"""Audio folder -> one clip embedding per file, in a single .npz.

  python -m matpac_jax.embed --encoder runs/b/export --input_dir DIR --out emb.npz \
      [--batch_size 32] [--num_workers 4]

`--encoder` is anything `matpac_jax.inference.Encoder.load` takes (an export directory, a training
workdir, `random`, `random:VARIANT`) or `logmel` (the log-mel mean/std baseline). Every audio file
under DIR (recursively, as `matpac_jax.preprocess` finds them) is decoded, made mono, resampled to
16 kHz and embedded in the papers' precise mode (DESIGN.md section 7).

The .npz holds `embeddings` (n, E) float32, `paths` (n,) relative to DIR in sorted order,
`skipped` (m,) the paths of files that could not be embedded and `skip_reasons` (m,) why
(`unreadable`, `empty`, `truncated`, `non_finite`, `too_short`). A bad file never stops the run;
each one is reported as it is met and counted at the end. The .npz is written under a temporary
name and renamed: it is either complete or absent.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import sys

import numpy as np

from matpac_jax import audio, inference, preprocess

logger = logging.getLogger(__name__)


def load_encoder(spec: str, batch_size: int = 32):
    """An `inference.Encoder` for `spec`, or the `LogMelBaseline` for "logmel"."""
    if spec == "logmel":
        return inference.LogMelBaseline()
    return inference.Encoder.load(spec, batch_size=batch_size)


def _read(input_dir: str, relpath: str, fe: audio.FrontEnd) -> tuple[np.ndarray | None, str]:
    """(waveform, "") or (None, reason) for one file."""
    try:
        wave = audio.load_audio(os.path.join(input_dir, relpath), fe.sample_rate)
    except audio.AudioError as e:
        return None, e.reason
    except OSError as e:  # vanished or unreadable on disk
        return None, f"unreadable ({e.strerror or e})"
    if wave.shape[0] < fe.min_samples:
        return None, "too_short"
    return wave, ""


def embed_folder(
    encoder,
    input_dir: str,
    *,
    batch_size: int = 32,
    num_workers: int = 4,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Embeds every audio file under `input_dir`; returns the arrays the .npz holds.

    Args:
      encoder: an `inference.Encoder` or `inference.LogMelBaseline`.
      input_dir: the folder, walked recursively.
      batch_size: files decoded and embedded together.
      num_workers: decoding threads (decoding the next batch overlaps embedding this one).
      progress: show a tqdm bar over the files.
    """
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    if batch_size < 1:
        raise ValueError(f"--batch_size {batch_size}: it must be at least 1")
    paths = preprocess.list_inputs(input_dir)
    if not paths:
        raise ValueError(
            f"no audio files ({', '.join(preprocess.audio_extensions())}) under {input_dir}"
        )
    fe = encoder.front_end
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    kept, rows, skipped, reasons = [], [], [], []
    bar = tqdm(
        total=len(paths), unit="file", desc="embed", disable=not progress, dynamic_ncols=True
    )
    with concurrent.futures.ThreadPoolExecutor(max(num_workers, 1)) as pool:

        def submit(batch):
            return [pool.submit(_read, input_dir, path, fe) for path in batch]

        pending = submit(batches[0])
        for i, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            if i + 1 < len(batches):
                pending = submit(batches[i + 1])
            waves = []
            for path, (wave, reason) in zip(batch, loaded):
                if wave is None:
                    bar.write(f"skipped {path}: {reason}", file=sys.stderr)
                    skipped.append(path)
                    reasons.append(reason)
                else:
                    kept.append(path)
                    waves.append(wave)
            if waves:
                rows.append(encoder.embed(waves, fe.sample_rate))
            bar.update(len(batch))
    bar.close()
    size = encoder.embedding_size
    return {
        "embeddings": np.concatenate(rows) if rows else np.zeros((0, size), np.float32),
        "paths": np.array(kept, dtype=str),
        "skipped": np.array(skipped, dtype=str),
        "skip_reasons": np.array(reasons, dtype=str),
    }


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes the arrays under a temporary name, then renames."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m matpac_jax.embed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--encoder",
        required=True,
        help="export dir, training workdir, random[:VARIANT], or logmel",
    )
    p.add_argument("--input_dir", required=True, help="folder of audio files (recursive)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--batch_size", type=int, default=32, help="files (and chunks) per model call")
    p.add_argument("--num_workers", type=int, default=4, help="decoding threads")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    import jax  # pylint: disable=g-import-not-at-top

    # Shapes repeat across runs on one corpus: reuse compiled code, as the trainer does (unless
    # the caller has chosen a cache already).
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update(
            "jax_compilation_cache_dir",
            os.environ.get(
                "JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/matpac_jax/jax")
            ),
        )
    encoder = load_encoder(args.encoder, args.batch_size)
    arrays = embed_folder(
        encoder,
        args.input_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    write_npz(args.out, arrays)
    n, m = len(arrays["paths"]), len(arrays["skipped"])
    print(
        f"{n + m} files: {n} embedded ({arrays['embeddings'].shape[1]}-d), {m} skipped"
        f"{' (listed above and in skipped/skip_reasons)' if m else ''} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
