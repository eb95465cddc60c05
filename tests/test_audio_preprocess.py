"""Preprocessing (matpac_jax/audio/preprocess.py): bad files, resampling, resume, workers, the lock,
the skip summary and a run that writes nothing. The subprocess CLI tests: test_cli_data.py."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from matpac_jax import cli
from matpac_jax.audio import frontend as audio
from matpac_jax.audio import preprocess, shards
from matpac_jax.dirlock import DirLock

SR = 16000
SECONDS = 6.2  # 618 frames: enough for the default --min_frames 608


def _tone(sr, seconds, freqs, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs)
    return np.stack([x, x], axis=1) if channels == 2 else x


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Good files of several rates and layouts beside one bad file of every kind."""
    d = tmp_path_factory.mktemp("audio")
    (d / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(d / "good16k.flac", _tone(SR, SECONDS, [300, 1200]), SR)
    sf.write(d / "sub" / "stereo44k.wav", _tone(44100, SECONDS, [500, 2000], 2), 44100)
    sf.write(d / "sub" / "deeper" / "low8k.wav", _tone(8000, SECONDS, [250, 900]), 8000)
    sf.write(d / "good.ogg", (0.1 * rng.standard_normal(int(SR * SECONDS))), SR)
    sf.write(d / "full.wav", _tone(SR, SECONDS, [440]), SR)
    data = (d / "full.wav").read_bytes()
    (d / "empty.wav").write_bytes(b"")
    (d / "garbage.flac").write_bytes(rng.bytes(4096))
    (d / "header_only.wav").write_bytes(data[:44])
    (d / "truncated.wav").write_bytes(data[: 44 + (len(data) - 44) // 2])
    nan = _tone(SR, SECONDS, [440]).astype(np.float32)
    nan[1000] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    inf = _tone(SR, SECONDS, [440]).astype(np.float32)
    inf[5] = np.inf
    sf.write(d / "sub" / "inf.wav", inf, SR, subtype="FLOAT")
    sf.write(d / "too_short.wav", _tone(SR, 2.0, [440]), SR)
    sf.write(d / "tiny.wav", _tone(SR, 0.05, [440]), SR)  # 800 samples < 1,200
    (d / "notes.txt").write_text("not audio: not an input")
    return d


EXPECTED = {
    "good16k.flac": "ok",
    "sub/stereo44k.wav": "ok",
    "sub/deeper/low8k.wav": "ok",
    "good.ogg": "ok",
    "full.wav": "ok",
    "empty.wav": "empty",
    "garbage.flac": "unreadable",
    "header_only.wav": "empty",
    "truncated.wav": "truncated",
    "nan.wav": "non_finite",
    "sub/inf.wav": "non_finite",
    "too_short.wav": "too_short",
    "tiny.wav": "too_short",
}


def _status(entry):
    return "ok" if entry["status"] == "ok" else entry["reason"].split(":")[0]


def test_mixed_folder(mixed_folder, tmp_path):
    out = tmp_path / "out"
    index = preprocess.preprocess(str(mixed_folder), str(out), records_per_shard=3, progress=False)
    report = json.loads((out / shards.REPORT_NAME).read_text())
    got = {e["path"]: _status(e) for e in report["files"]}
    assert got == EXPECTED
    assert report["num_inputs"] == report["num_ok"] + report["num_skipped"] == len(EXPECTED)
    assert index["num_records"] == 5 and index["num_skipped"] == 8

    src = shards.MelSource(str(out))
    sources = [s for sh in index["shards"] for s in sh["sources"]]
    assert sorted(sources) == sorted(k for k, v in EXPECTED.items() if v == "ok")
    values = []
    for i, rel in enumerate(sources):
        mel = src[i].astype(np.float32)
        assert np.isfinite(mel).all() and mel.shape == (
            80,
            audio.FrontEnd().num_frames(int(SR * SECONDS)),
        )
        values.append(mel)
        # Resampled files must give the log-mel of the same tones synthesised at 16 kHz.
        freqs = {
            "sub/stereo44k.wav": [500, 2000],
            "sub/deeper/low8k.wav": [250, 900],
            "good16k.flac": [300, 1200],
        }.get(rel)
        if freqs:
            want = audio.log_mel(_tone(SR, SECONDS, freqs).astype(np.float32))
            loud = want > want.max() - 6  # the bands that hold the tones (resampler floor aside)
            np.testing.assert_allclose(
                mel[:, 2:-2][loud[:, 2:-2]], want[:, 2:-2][loud[:, 2:-2]], atol=0.05
            )
    allv = np.concatenate([v.ravel() for v in values]).astype(np.float64)
    assert index["mean"] == pytest.approx(allv.mean(), rel=1e-9)
    assert index["std"] == pytest.approx(allv.std(), rel=1e-6)
    assert not list(out.rglob("*.tmp-*"))


def test_resume_after_interruption(mixed_folder, tmp_path, monkeypatch):
    ref = preprocess.preprocess(
        str(mixed_folder), str(tmp_path / "ref"), records_per_shard=2, progress=False
    )
    out = tmp_path / "out"
    real_write, calls = preprocess.write_shard, []

    def dying_write(output_dir, name, results, labels=None):
        if len(calls) == 3:  # leave a half-written shard behind, as a killed run would
            open(os.path.join(output_dir, name + ".array_record.tmp-999"), "wb").write(b"x")
            raise KeyboardInterrupt
        calls.append(name)
        return real_write(output_dir, name, results, labels)

    monkeypatch.setattr(preprocess, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        preprocess.preprocess(str(mixed_folder), str(out), records_per_shard=2, progress=False)
    assert not (out / shards.INDEX_NAME).exists()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.array_record")}
    monkeypatch.setattr(preprocess, "write_shard", real_write)

    seen, real_process = [], preprocess.process_file

    def counting_process(job, relpath):
        seen.append(relpath)
        return real_process(job, relpath)

    monkeypatch.setattr(preprocess, "process_file", counting_process)
    index = preprocess.preprocess(str(mixed_folder), str(out), records_per_shard=2, progress=False)
    assert len(seen) == len(EXPECTED) - 6  # the three finished shards were not redone
    assert {
        p.name: p.stat().st_mtime_ns
        for p in (out / "shards").glob("*.array_record")
        if p.name in done
    } == done
    assert not list(out.rglob("*.tmp-*"))
    assert index == ref  # same records, sources, counts and statistics: nothing duplicated
    src, ref_src = shards.MelSource(str(out)), shards.MelSource(str(tmp_path / "ref"))
    assert len(src) == len(ref_src) == 5
    for i in range(len(src)):
        np.testing.assert_array_equal(src[i], ref_src[i])


def test_refuses_to_mix_runs(mixed_folder, tmp_path):
    out = str(tmp_path / "out")
    preprocess.preprocess(str(mixed_folder), out, records_per_shard=3, progress=False)
    with pytest.raises(cli.UserError, match="holds a run with other records_per_shard"):
        preprocess.preprocess(str(mixed_folder), out, records_per_shard=4, progress=False)
    index = preprocess.preprocess(
        str(mixed_folder), out, records_per_shard=4, overwrite=True, progress=False
    )
    assert index["num_records"] == 5 and len(index["shards"]) == 4


def test_cli_with_workers(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        preprocess.main(
            [
                "--input_dir",
                str(mixed_folder),
                "--output_dir",
                str(out),
                "--num_workers",
                "2",
                "--min_frames",
                "100",
            ]
        )
        == 0
    )
    index = json.loads((out / shards.INDEX_NAME).read_text())
    assert index["num_records"] == 6  # too_short.wav (198 frames) now passes; tiny.wav never
    out_text = capsys.readouterr().out
    assert "6 written, 7 skipped" in out_text
    assert "skipped 7 of 13 inputs" in out_text
    assert "  2 non_finite (e.g. nan.wav)" in out_text
    assert "  1 truncated (e.g. truncated.wav)" in out_text
    assert "  1 too_short: 800 samples < the front end's min_samples 1200 (e.g. tiny" in out_text


def test_skip_summary_groups_by_kind_and_limit():
    def skipped(path, reason):
        return {"path": path, "status": "skipped", "reason": reason}

    entries = [
        {"path": "ok.wav", "status": "ok", "reason": None},
        skipped("a.wav", "too_short: 606 frames < --min_frames 608"),
        skipped("b.wav", "too_short: 198 frames < --min_frames 608"),
        skipped("c.wav", "too_short: 800 samples < the front end's min_samples 1200"),
        skipped("d.wav", "unreadable: LibsndfileError: Format not recognised"),
        skipped("e.wav", "unreadable: RuntimeError: something else"),
        skipped("f.wav", "truncated: 10 of 20 frames"),
    ]
    assert preprocess.skip_summary(entries) == [
        "2 too_short: 198-606 frames < --min_frames 608 (e.g. a.wav)",
        "2 unreadable (e.g. d.wav)",
        "1 too_short: 800 samples < the front end's min_samples 1200 (e.g. c.wav)",
        "1 truncated (e.g. f.wav)",
    ]
    assert preprocess.skip_summary(entries[:1]) == []


def test_nothing_written_gives_strict_json_and_exit_1(tmp_path, capsys):
    d = tmp_path / "audio"
    d.mkdir()
    for i in range(3):
        sf.write(d / f"{i}.wav", _tone(SR, 6.08, [440]), SR)  # 606 frames < 608
    out = tmp_path / "out"
    assert preprocess.main(["--input_dir", str(d), "--output_dir", str(out)]) == 1
    printed = capsys.readouterr()
    assert "  3 too_short: 606 frames < --min_frames 608 (e.g. 0.wav)" in printed.out
    assert "nothing written: all 3 inputs were skipped" in printed.err

    def no_nan(name):
        raise AssertionError(f"{name} in index.json")

    index = json.loads((out / shards.INDEX_NAME).read_text(), parse_constant=no_nan)
    assert index["num_records"] == 0 and index["mean"] is None and index["std"] is None


def test_a_held_output_dir_is_refused(mixed_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with DirLock(str(out), "preprocessing run"):
        with pytest.raises(cli.UserError, match="in use by another preprocessing run"):
            preprocess.preprocess(str(mixed_folder), str(out), progress=False)
    assert not (out / "plan.json").exists()
