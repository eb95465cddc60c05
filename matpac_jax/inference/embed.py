r"""Audio folder -> one clip embedding per file, in a single .npz.

  python -m matpac_jax.inference.embed --encoder runs/b/export --input_dir DIR --out emb.npz \
      [--batch_size 32] [--num_workers 4]

`--encoder` is anything `matpac_jax.inference.encoder.load_encoder` takes: an export directory, a
training workdir, `random`, `random:VARIANT`, or `logmel` (the log-mel mean/std baseline).
Every audio file under DIR (recursively, as `matpac_jax.audio.preprocess` finds them) is decoded, made
mono, resampled to 16 kHz and embedded in the papers' precise mode (docs/method.md, section 7).

The .npz holds `embeddings` (n, E) float32, `paths` (n,) relative to DIR in sorted order,
`skipped` (m,) the paths of files that could not be embedded, `skip_reasons` (m,) why
(`unreadable`, `empty`, `truncated`, `non_finite`, `too_short`) and `skip_details` (m,) the
particulars (`800 samples < the front end's min_samples 1200`). A bad file never stops the run;
each one is reported as it is met and the reasons are counted, grouped, at the end. The .npz is
written under a temporary name and renamed: it is either complete or absent.

Relative paths are resolved against the current directory. Exit status: 0 when at least one file
was embedded; 1 when every file was skipped (no .npz is written); 2, with one `error:` line,
for a mistake in the command (a missing folder or one without audio files, an `--out` that is a
folder or cannot be written, a bad number, an unknown encoder), found before any clip is
decoded or embedded.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os
import sys

import numpy as np

from matpac_jax import cli, storage
from matpac_jax.audio import frontend as audio
from matpac_jax.audio import preprocess

PROG = "python -m matpac_jax.inference.embed"
logger = logging.getLogger(__name__)


def _read(input_dir: str, relpath: str, fe: audio.FrontEnd) -> tuple[np.ndarray | None, str, str]:
    """(waveform, "", "") or (None, reason, detail) for one file."""
    try:
        with storage.local_copy(storage.join(input_dir, relpath)) as local:
            wave = audio.load_audio(local, fe.sample_rate)
    except audio.AudioError as e:
        return None, e.reason, e.detail
    except OSError as e:  # vanished or unreadable on disk
        return None, "unreadable", str(e.strerror or e)
    if wave.shape[0] < fe.min_samples:
        detail = f"{wave.shape[0]} samples < the front end's min_samples {fe.min_samples}"
        return None, "too_short", detail
    return wave, "", ""


def embed_folder(
    encoder,
    input_dir: str,
    *,
    batch_size: int = 32,
    num_workers: int = 4,
    progress: bool = True,
    paths: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Embeds every audio file under `input_dir`; returns the arrays the .npz holds.

    Args:
      encoder: an `inference.Encoder` or `inference.LogMelBaseline`.
      input_dir: the folder, walked recursively.
      batch_size: files decoded and embedded together.
      num_workers: decoding threads (decoding the next batch overlaps embedding this one).
      progress: show progress (a bar on a terminal, log lines elsewhere).
      paths: the files to embed, relative to `input_dir` (default: all, as
        `preprocess.list_inputs` finds them).
    """
    if batch_size < 1:
        raise cli.UserError(f"--batch_size {batch_size}: must be at least 1")
    input_dir = cli.abspath(input_dir)
    paths = preprocess.list_inputs(input_dir) if paths is None else paths
    fe = encoder.front_end
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    kept, rows, skipped, reasons, details = [], [], [], [], []
    bar = cli.progress(len(paths), desc="embed", unit="file", enabled=progress)
    with concurrent.futures.ThreadPoolExecutor(max(num_workers, 1)) as pool:

        def submit(batch):
            return [pool.submit(_read, input_dir, path, fe) for path in batch]

        pending = submit(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            if i + 1 < len(batches):
                pending = submit(batches[i + 1])
            waves = []
            for path, (wave, reason, detail) in zip(batch, loaded):
                if wave is None:
                    bar.write(f"skipped {path}: {reason}", file=sys.stderr)
                    skipped.append(path)
                    reasons.append(reason)
                    details.append(detail)
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
        "skip_details": np.array(details, dtype=str),
    }


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes the arrays at once (a local path or a URL): readers never see half a file."""
    path = cli.abspath(path)
    storage.makedirs(storage.dirname(path))  # `main` made it; a library caller may not
    buffer = io.BytesIO()  # a file object: np.savez would append ".npz" to a name
    np.savez(buffer, **arrays)
    storage.write_bytes(path, buffer.getvalue())


def skip_lines(arrays: dict[str, np.ndarray]) -> list[str]:
    """The skips grouped by reason, as `preprocess.skip_summary` words them."""
    entries = [
        {"path": str(p), "status": "skipped", "reason": f"{r}: {d}"}
        for p, r, d in zip(arrays["skipped"], arrays["skip_reasons"], arrays["skip_details"])
    ]
    return preprocess.skip_summary(entries)


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument(
        "--encoder",
        required=True,
        help="export dir, training workdir, random[:VARIANT], or logmel",
    )
    p.add_argument("--input_dir", required=True, help="folder of audio files (recursive)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument(
        "--batch_size",
        type=cli.int_at_least(1),
        default=32,
        help="files (and chunks) per model call",
    )
    p.add_argument("--num_workers", type=cli.int_at_least(0), default=4, help="decoding threads")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype of the encoder (float32: the reference's embeddings)",
    )
    return p


def _embed(args, input_dir: str, paths: list[str]) -> dict[str, np.ndarray]:
    """Loads the encoder (jax is imported only now, after the checks) and embeds `paths`."""
    import jax  # pylint: disable=g-import-not-at-top (after the input checks)

    from matpac_jax.inference import encoder as inference  # pylint: disable=g-import-not-at-top (jax: after the checks)

    # Shapes repeat across runs on one corpus: reuse compiled code, as the trainer does (unless
    # the caller has chosen a cache already).
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update(
            "jax_compilation_cache_dir",
            os.environ.get(
                "JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/matpac_jax/jax")
            ),
        )
    encoder = inference.load_encoder(args.encoder, batch_size=args.batch_size, dtype=args.dtype)
    return embed_folder(
        encoder,
        input_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        paths=paths,
    )


def _main(argv) -> int:
    args = _parser().parse_args(argv)
    # Every check a user can fail runs here, before the encoder is loaded or a clip decoded:
    # an unwritable --out must not surface only after the whole folder has been embedded.
    input_dir = cli.input_dir(args.input_dir, "--input_dir", url=True)
    out = cli.output_file(args.out, "--out", url=True)
    paths = preprocess.list_inputs(input_dir)
    folder = storage.dirname(out)
    existed = storage.isdir(folder)
    with cli.removed_on_failure(folder):
        cli.make_dir(folder, "--out")  # now: a file system may refuse what os.access allowed
        arrays = _embed(args, input_dir, paths)
    n, m = len(arrays["paths"]), len(arrays["skipped"])
    lines = skip_lines(arrays)
    print(f"skipped {m} of {n + m} files" + (":" if lines else ""))
    for line in lines:
        print(f"  {line}")
    if not n:
        if not existed and not storage.is_url(folder):
            os.rmdir(folder)  # nothing written: leave nothing behind
        print(
            f"{PROG}: error: nothing written: all {m} files were skipped (reasons above)",
            file=sys.stderr,
        )
        return 1
    write_npz(out, arrays)
    print(
        f"{n + m} files: {n} embedded ({arrays['embeddings'].shape[1]}-d), {m} skipped"
        f"{' (listed above and in skipped/skip_reasons)' if m else ''} -> {out}"
    )
    return 0


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
