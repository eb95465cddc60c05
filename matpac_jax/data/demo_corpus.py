"""Built-in procedural demo corpus: seeded synthetic audio for pretraining and linear probes.

Usage: ``python -m matpac_jax.data.demo_corpus --out DIR [--num_pretrain 1000]
[--num_labelled 3000] [--num_tagging 600] [--seed 0] [--format flac|wav] [--num_workers 0] [--force]``
(relative paths are resolved against the current directory; a bad flag or an --out that cannot
be written prints one ``error:`` line and exits 2, leaving no new folder behind)

Output layout (paths in CSVs are relative to DIR; audio is 16 kHz mono PCM_16)::

    DIR/pretrain/00000.flac ...   mixtures, 97,600 samples (6.10 s) each
    DIR/labelled/00000.flac ...   one event each, 48,000 samples (3.0 s)
    DIR/tagging/{train,eval}/00000.flac ...   mixtures as pretrain/, labelled by their events
    DIR/tagging/{train,eval}.csv  path,labels  (`;`-separated; paths relative to the split folder)
    DIR/pretrain.csv              path,duration_s,num_events,level_db,snr_db
    DIR/labelled.csv              path,split,event,timbre,pitch,param,value  (source parameters)
    DIR/tasks/{timbre,pitch,event}.csv   path,label,split
    DIR/manifest.json             written last; its presence marks a complete corpus

Pretraining clips are 6.10 s, not 6.08 s: 400-sample windows at a 160-sample hop give
1 + (N - 400) // 160 frames, and the 608-frame crop needs N >= 400 + 607 * 160 = 97,520
(6.08 s = 97,280 samples gives 606). Each mixes 2-6 events (harmonic notes, coloured-noise
bursts, chirps, percussive hits) at random times and gains over a coloured noise floor at a
random SNR, from the full parameter ranges (pretraining is unlabelled: no split applies).

Tagging clips are more such mixtures (their own random streams), each labelled with the classes
of the events it holds (multi-label, 9 classes): the timbre of each harmonic note
(`note:string` ... `note:bell`), `noise_burst`, `chirp`, `percussive_hit`. The first 3/4 are
the train split, the rest eval: the demo's stand-in for AudioSet fine-tuning
(`configs/finetune_audioset.py:runlocal`).

Labelled clips follow a fixed schedule (``labelled_schedule``): ~70/15/15 train/valid/test,
and within a split the event pattern note, noise, note, chirp, note, hit repeats while the
notes cycle through all (timbre, pitch class) pairs, so each split of >= 24 clips holds
every class of every task by construction. Splits are disjoint in source parameters
(``split_intervals``; gaps separate the ranges so a probe measures generalisation):

- timbre and pitch (harmonic notes): by octave register. train: octaves 2, 4, 6
  (MIDI 36-47, 60-71, 84-95), valid: octave 3 (MIDI 48-59), test: octave 5 (MIDI 72-83).
  Harmonic-amplitude jitter, envelope and vibrato are drawn from each clip's own RNG.
- event: notes as above; noise bursts by band centre (150-5000 Hz), chirps by start
  frequency (80-4000 Hz), percussive hits by decay time (0.02-0.6 s), each range cut on a
  log scale into train [0, .24] + [.41, .59] + [.76, 1], valid [.26, .39], test [.61, .74].
  The event task keeps a third of the notes so its four classes are balanced.

Every clip's audio comes from ``np.random.default_rng([seed, kind, index])``, so output is
byte-identical whatever ``num_workers`` is.
"""

import csv
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from matpac_jax import cli

GENERATOR_VERSION = "1.1"  # 1.1: tagging mixtures (the other clips are unchanged)
SAMPLE_RATE = 16000
PRETRAIN_SAMPLES = 97_600  # 6.10 s -> 608 frames of 400/160 (see module docstring)
LABELLED_SAMPLES = 48_000  # 3.0 s
MIN_LABELLED = 72  # 3 splits x 24 clips: the smallest schedule that covers every class

TIMBRES = ("string", "clarinet", "flute", "brass", "organ", "bell")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
EVENT_TYPES = ("harmonic_note", "noise_burst", "chirp", "percussive_hit")
SPLITS = ("train", "valid", "test")
TAGGING_SPLITS = ("train", "eval")
TAGGING_CLASSES = tuple(f"note:{t}" for t in TIMBRES) + EVENT_TYPES[1:]
MIN_TAGGING = 8  # 6 train + 2 eval clips
# Labelled clips: the probe tasks' test splits of 225-300 clips (timbre and pitch use the notes,
# half of them), enough that the demo's probe intervals reflect the encoders (docs/small_scale.md).
DEFAULT_LABELLED = 3000
DEFAULT_TAGGING = 600  # the command's and the demo cache's: 450 train + 150 eval clips

_NYQUIST_GUARD = 0.45 * SAMPLE_RATE  # keep partials clear of Nyquist to avoid aliasing
_TABLE = 2048  # wavetable length for harmonic notes
_OCTAVES = {"train": (2, 4, 6), "valid": (3,), "test": (5,)}
_SEGMENTS = {
    "train": ((0.0, 0.24), (0.41, 0.59), (0.76, 1.0)),
    "valid": ((0.26, 0.39),),
    "test": ((0.61, 0.74),),
}
_SPLIT_PARAMS = {
    "noise_burst": ("band_centre_hz", 150.0, 5000.0),
    "chirp": ("start_hz", 80.0, 4000.0),
    "percussive_hit": ("decay_s", 0.02, 0.6),
}
_PATTERN = (
    "harmonic_note",
    "noise_burst",
    "harmonic_note",
    "chirp",
    "harmonic_note",
    "percussive_hit",
)
_PRETRAIN_EVENT_PROBS = (0.4, 0.2, 0.15, 0.25)

# Harmonic amplitude profiles (k = harmonic number): these spectral shapes define the families.
_PROFILES = {
    "string": lambda k: 1.0 / k,  # sawtooth-like: all harmonics, 1/k
    "clarinet": lambda k: np.where(k % 2 == 1, 1.0 / k, 0.05 / k),  # odd harmonics dominate
    "flute": lambda k: np.exp(-1.2 * (k - 1)),  # few harmonics, strong fundamental
    "brass": lambda k: k * np.exp(-k / 2.5),  # energy peaks around harmonics 2-3
    "organ": lambda k: np.isin(k, (1, 2, 3, 4, 6, 8)) * 1.0,  # sparse drawbar-like set
}
_BELL_RATIOS = np.array([0.5, 1.0, 1.19, 1.56, 2.0, 2.51, 2.66, 3.01, 4.17])  # inharmonic
_BELL_AMPS = np.array([0.6, 1.0, 0.8, 0.5, 0.6, 0.35, 0.3, 0.25, 0.15])
# (attack_s, sustain_level, release_s) ranges and vibrato depth: onsets are part of timbre.
_ENVELOPES = {
    "string": ((0.05, 0.20), (0.6, 0.9), (0.10, 0.30), 0.004),
    "clarinet": ((0.02, 0.06), (0.7, 0.95), (0.03, 0.10), 0.001),
    "flute": ((0.04, 0.12), (0.6, 0.9), (0.05, 0.15), 0.003),
    "brass": ((0.02, 0.08), (0.5, 0.8), (0.05, 0.15), 0.001),
    "organ": ((0.005, 0.015), (0.95, 1.0), (0.01, 0.03), 0.0),
}


def _unit_rms(x):
    """Scale a signal to RMS 1 (silent input stays silent)."""
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _adsr(n, attack, sustain, release, decay=0.1):
    """Piecewise-linear ADSR envelope of n samples (times in seconds, shrunk to fit)."""
    dur = n / SAMPLE_RATE
    scale = min(1.0, 0.9 * dur / (attack + decay + release))
    a, d, r = attack * scale, decay * scale, release * scale
    t = np.arange(n) / SAMPLE_RATE
    return np.interp(t, [0.0, a, a + d, dur - r, dur], [0.0, 1.0, sustain, sustain, 0.0])


@functools.lru_cache(maxsize=None)
def _log_freqs(size):
    """log2 of the rfft bin frequencies for a signal of ``size`` samples (DC clamped to 1 Hz)."""
    return np.log2(np.maximum(np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE), 1.0))


def _shaped_noise(rng, n, alpha, lo_hz, hi_hz):
    """Unit-RMS noise with a 1/f**alpha power spectrum (0 white, 1 pink, 2 brown) in a band."""
    logf = _log_freqs(1 << (n - 1).bit_length())  # power-of-two FFT, cropped to n below
    # Linear ramps over a quarter octave at the band edges avoid brick-wall ringing.
    gain = np.clip((logf - np.log2(lo_hz)) / 0.25 + 0.5, 0.0, 1.0)
    gain *= np.clip((np.log2(hi_hz) - logf) / 0.25 + 0.5, 0.0, 1.0)
    gain *= np.exp2(-alpha / 2.0 * logf)
    # White Gaussian noise has i.i.d. complex Gaussian Fourier coefficients: draw them directly.
    spec = rng.standard_normal(len(logf)) + 1j * rng.standard_normal(len(logf))
    return _unit_rms(np.fft.irfft(spec * gain)[:n])


def _wavetable_tone(rng, amps, cycles):
    """Harmonics ``amps`` at running phase ``cycles`` (periods), via an O(n) one-period table."""
    spec = np.zeros(_TABLE // 2 + 1, dtype=complex)
    spec[1 : len(amps) + 1] = amps * _TABLE / 2 * np.exp(2j * np.pi * rng.random(len(amps)))
    table = np.fft.irfft(spec, _TABLE)
    # Linear interpolation in the table, closed periodically by repeating its first sample.
    return np.interp((cycles % 1.0) * _TABLE, np.arange(_TABLE + 1), np.append(table, table[0]))


def _harmonic_note(rng, family, midi, dur):
    """One note of a timbre family at a MIDI pitch, with per-clip jitter of its parameters."""
    n = int(dur * SAMPLE_RATE)
    f0 = 440.0 * 2.0 ** ((midi - 69) / 12.0)
    t = np.arange(n) / SAMPLE_RATE
    if family == "bell":  # inharmonic partials, higher ones decay faster
        keep = _BELL_RATIOS * f0 < _NYQUIST_GUARD
        ratios, amps = _BELL_RATIOS[keep], _BELL_AMPS[keep] * np.exp(rng.normal(0, 0.15, sum(keep)))
        tau = rng.uniform(0.3, 1.5) / ratios**0.7
        phases = 2 * np.pi * (ratios[:, None] * f0 * t + rng.random((len(ratios), 1)))
        decays = np.exp(-t / tau[:, None]) * np.minimum(t / 0.002, 1.0)  # 2 ms strike
        return (amps[:, None] * decays * np.sin(phases)).sum(axis=0)
    attack, sustain, release, depth = _ENVELOPES[family]
    depth *= rng.uniform(0.5, 1.5)
    freq = f0 * (1.0 + depth * np.sin(2 * np.pi * rng.uniform(4.0, 6.5) * t + rng.uniform(0, 6.3)))
    k = np.arange(1, min(int(_NYQUIST_GUARD / (f0 * (1 + depth))), 60) + 1)
    amps = _PROFILES[family](k) * np.exp(rng.normal(0.0, 0.15, len(k)))  # timbre jitter
    wave = _wavetable_tone(rng, amps, np.cumsum(freq) / SAMPLE_RATE)
    if family == "flute":  # breath noise above the fundamental
        wave += 0.05 * _shaped_noise(rng, n, 0.0, min(2 * f0, 4000.0), 7500.0)
    env = _adsr(n, rng.uniform(*attack), rng.uniform(*sustain), rng.uniform(*release))
    return wave * env


def _noise_burst(rng, centre_hz, dur):
    """Band-limited white/pink/brown noise burst centred (geometrically) on ``centre_hz``."""
    n = int(dur * SAMPLE_RATE)
    half_width = 2.0 ** (rng.uniform(0.5, 3.0) / 2.0)
    lo, hi = max(centre_hz / half_width, 30.0), min(centre_hz * half_width, 7800.0)
    noise = _shaped_noise(rng, n, float(rng.integers(0, 3)), lo, hi)
    return noise * _adsr(n, rng.uniform(0.005, 0.2), rng.uniform(0.3, 1.0), rng.uniform(0.02, 0.3))


def _chirp(rng, start_hz, dur):
    """Linear or exponential sweep over 1-4 octaves up or down, with 1-3 harmonics."""
    n = int(dur * SAMPLE_RATE)
    end_hz = float(np.clip(start_hz * 2.0 ** (rng.uniform(1, 4) * rng.choice([-1, 1])), 50, 7000))
    ramp = np.arange(n) / n
    linear = rng.random() < 0.5
    freq = (
        start_hz + (end_hz - start_hz) * ramp if linear else start_hz * (end_hz / start_hz) ** ramp
    )
    cycles = np.cumsum(freq) / SAMPLE_RATE
    wave = np.zeros(n)
    for k in range(1, int(rng.integers(1, 4)) + 1):
        if k * max(start_hz, end_hz) < _NYQUIST_GUARD:
            wave += 0.6 ** (k - 1) * np.sin(2 * np.pi * k * cycles)
    return wave * _adsr(n, rng.uniform(0.005, 0.1), rng.uniform(0.5, 1.0), rng.uniform(0.02, 0.2))


def _percussive_hit(rng, decay_s):
    """Kick-, snare- or hat-like hit whose body decays with time constant ``decay_s``."""
    n = int(min(6.0 * decay_s + 0.02, 2.5) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    body = np.exp(-t / decay_s)
    kind = rng.integers(0, 3)
    if kind == 0:  # kick: sine with a fast downward pitch glide plus a short click
        f_hi, f_lo = rng.uniform(100, 200), rng.uniform(40, 70)
        freq = f_lo + (f_hi - f_lo) * np.exp(-t / rng.uniform(0.01, 0.05))
        click = 0.3 * _shaped_noise(rng, n, 0.0, 1000.0, 7000.0) * np.exp(-t / 0.004)
        return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * body + click
    if kind == 1:  # snare: short tonal body plus broadband rattle
        tone = np.sin(2 * np.pi * rng.uniform(150, 300) * t) * np.exp(-t / (0.5 * decay_s))
        return tone + 0.8 * _shaped_noise(rng, n, 0.0, 1000.0, 7500.0) * body
    return _shaped_noise(rng, n, 0.0, rng.uniform(4000, 6000), 7800.0) * body  # hat


def split_intervals(event):
    """Source-parameter ranges of each split for one event type.

    Returns:
        ``{"param": name, "train": [[lo, hi], ...], "valid": [...], "test": [...]}``; closed
        intervals, never overlapping across splits.
    """
    if event == "harmonic_note":
        return {
            "param": "midi",
            **{
                s: [[12 * (o + 1), 12 * (o + 1) + 11] for o in octs] for s, octs in _OCTAVES.items()
            },
        }
    name, lo, hi = _SPLIT_PARAMS[event]
    return {
        "param": name,
        **{
            s: [[lo * (hi / lo) ** a, lo * (hi / lo) ** b] for a, b in segs]
            for s, segs in _SEGMENTS.items()
        },
    }


def _sample_param(rng, event, split):
    """Draw an event's split parameter log-uniformly from its split's ranges (None: full range)."""
    _, lo, hi = _SPLIT_PARAMS[event]
    segs = _SEGMENTS[split] if split else ((0.0, 1.0),)
    widths = np.array([b - a for a, b in segs])
    a, b = segs[rng.choice(len(segs), p=widths / widths.sum())]
    return lo * (hi / lo) ** rng.uniform(a, b)


def _fade_out(x, seconds=0.01):
    """Ramp the last ``seconds`` to zero so truncated decays do not end in a click."""
    n = min(len(x), int(seconds * SAMPLE_RATE))
    x[len(x) - n :] *= np.linspace(1.0, 0.0, n)
    return x


def _random_event(rng, event, split=None, family=None, pitch_class=None):
    """Synthesise one event, faded out; split/family/pitch_class pin labelled parameters.

    Returns:
        (waveform, value of the split parameter, its class): the value is e.g. the MIDI note of
        a harmonic note, the class `note:TIMBRE` for a note, else the event type.
    """
    max_dur = 2.5 if split else 3.0  # labelled events must fit their 3 s clip
    if event == "harmonic_note":
        family = family or TIMBRES[rng.integers(len(TIMBRES))]
        midi = int(
            12 * (rng.choice(_OCTAVES[split]) + 1) + pitch_class if split else rng.integers(36, 96)
        )
        wave = _harmonic_note(rng, family, midi, rng.uniform(0.3, max_dur))
        return _fade_out(wave), midi, f"note:{family}"
    value = float(_sample_param(rng, event, split))
    if event == "noise_burst":
        wave = _noise_burst(rng, value, rng.uniform(0.15, max_dur - 0.5))
    elif event == "chirp":
        wave = _chirp(rng, value, rng.uniform(0.25, max_dur - 0.5))
    else:
        wave = _percussive_hit(rng, value)
    return _fade_out(wave), value, event


def _background(rng, n, level_db):
    """Broadband coloured noise floor at ``level_db`` dB RMS."""
    return _shaped_noise(rng, n, rng.uniform(0.0, 2.0), 20.0, 7900.0) * 10.0 ** (level_db / 20)


def _peak_limit(x, peak=0.9):
    """Scale down (never up) so that |x| <= peak."""
    top = np.abs(x).max()
    return x * (peak / top) if top > peak else x


def _mixture(rng):
    """Mixture clip: 2-6 events at random times and gains over a noise floor.

    Returns:
        (audio, pretrain.csv row, the classes of its events)
    """
    level_db, snr_db = rng.uniform(-32.0, -12.0), rng.uniform(5.0, 40.0)
    audio = _background(rng, PRETRAIN_SAMPLES, level_db - snr_db)
    num_events = int(rng.integers(2, 7))
    classes = set()
    for _ in range(num_events):
        event = EVENT_TYPES[rng.choice(len(EVENT_TYPES), p=_PRETRAIN_EVENT_PROBS)]
        wave, _, name = _random_event(rng, event)
        classes.add(name)
        start = rng.integers(0, PRETRAIN_SAMPLES - len(wave) + 1)
        gain = 10.0 ** ((level_db + rng.uniform(-12.0, 0.0)) / 20)  # per-event loudness
        audio[start : start + len(wave)] += _unit_rms(wave) * gain
    row = {
        "duration_s": PRETRAIN_SAMPLES / SAMPLE_RATE,
        "num_events": num_events,
        "level_db": round(level_db, 3),
        "snr_db": round(snr_db, 3),
    }
    return _peak_limit(audio), row, sorted(classes)


def _pretrain_clip(seed, index):
    audio, row, _ = _mixture(np.random.default_rng([seed, 0, index]))
    return audio, row


def _tagging_clip(seed, index):
    audio, _, classes = _mixture(np.random.default_rng([seed, 2, index]))
    return audio, {"labels": ";".join(classes)}


def tagging_split(index, num_tagging):
    """ "train" for the first 3/4 of the tagging clips, "eval" for the rest."""
    return "train" if index < num_tagging - max(2, num_tagging // 4) else "eval"


def _labelled_clip(seed, index, slot):
    """Single-event clip for one schedule slot, over a light noise floor."""
    rng = np.random.default_rng([seed, 1, index])
    split, event, family, pitch_class, _ = slot
    wave, value, _ = _random_event(rng, event, split, family, pitch_class)
    level_db = rng.uniform(-30.0, -12.0)
    audio = _background(rng, LABELLED_SAMPLES, level_db - rng.uniform(25.0, 40.0))
    start = rng.integers(SAMPLE_RATE // 20, LABELLED_SAMPLES - len(wave) + 1)
    audio[start : start + len(wave)] += _unit_rms(wave) * 10.0 ** (level_db / 20)
    row = {
        "split": split,
        "event": event,
        "timbre": family or "",
        "pitch": "" if pitch_class is None else PITCH_CLASSES[pitch_class],
        "param": split_intervals(event)["param"],
        "value": value,
    }
    return _peak_limit(audio), row


def labelled_schedule(num_labelled):
    """Deterministic (split, event, timbre, pitch_class, in_event_task) per labelled clip.

    Raises:
        ValueError: if num_labelled < MIN_LABELLED (some class would miss a split).
    """
    if num_labelled < MIN_LABELLED:
        raise ValueError(f"num_labelled must be >= {MIN_LABELLED}, got {num_labelled}")
    held_out = max(MIN_LABELLED // 3, round(0.15 * num_labelled))
    sizes = {"train": num_labelled - 2 * held_out, "valid": held_out, "test": held_out}
    slots = []
    for split in SPLITS:
        for j in range(sizes[split]):
            event, note = _PATTERN[j % len(_PATTERN)], j // 2  # notes fill the even slots
            if event != "harmonic_note":
                slots.append((split, event, None, None, True))
                continue
            # Pitch cycles fastest; the timbre offset shifts by one every 12 notes, so any
            # 12 notes cover all pitch classes and timbres and 72 notes cover every pair.
            # The event task takes a third of the notes, rotating which third every 12 notes
            # so that its notes still span all pitch classes and timbres.
            family = TIMBRES[(note % 12 + note // 12) % len(TIMBRES)]
            slots.append((split, event, family, note % 12, note % 3 == (note // 12) % 3))
    return slots


def _build(job):
    """Synthesise and write one clip (top-level so worker processes can run it)."""
    out_dir, kind, seed, index, slot, fmt = job
    if kind == "pretrain":
        audio, row = _pretrain_clip(seed, index)
    elif kind == "tagging":
        audio, row = _tagging_clip(seed, index)
    else:
        audio, row = _labelled_clip(seed, index, slot)
    rel = f"{kind}/{slot}/{index:05d}.{fmt}" if kind == "tagging" else f"{kind}/{index:05d}.{fmt}"
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)  # float64 -> PCM_16
    sf.write(os.path.join(out_dir, rel), pcm, SAMPLE_RATE, subtype="PCM_16", format=fmt.upper())
    return {"path": rel, **row}


def _write_csv(path, fields, rows):
    """Write rows (dicts) with a header, keeping only ``fields``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_tables(out, pretrain_rows, labelled_rows, schedule, tagging_rows=()):
    """Write pretrain.csv, labelled.csv, the per-task CSVs and the tagging labels CSVs; return
    per-task split counts."""
    for split in TAGGING_SPLITS:
        prefix = f"tagging/{split}/"
        rows = [
            {**r, "path": r["path"][len(prefix) :]}
            for r in tagging_rows
            if r["path"].startswith(prefix)
        ]
        _write_csv(out / "tagging" / f"{split}.csv", ["path", "labels"], rows)
    _write_csv(
        out / "pretrain.csv",
        ["path", "duration_s", "num_events", "level_db", "snr_db"],
        pretrain_rows,
    )
    _write_csv(
        out / "labelled.csv",
        ["path", "split", "event", "timbre", "pitch", "param", "value"],
        labelled_rows,
    )
    notes = [r for r in labelled_rows if r["event"] == "harmonic_note"]
    tasks = {
        "timbre": [{**r, "label": r["timbre"]} for r in notes],
        "pitch": [{**r, "label": r["pitch"]} for r in notes],
        "event": [
            {**r, "label": r["event"]} for r, slot in zip(labelled_rows, schedule) if slot[4]
        ],
    }
    for task, rows in tasks.items():
        _write_csv(out / "tasks" / f"{task}.csv", ["path", "label", "split"], rows)
    return {t: {s: sum(r["split"] == s for r in rows) for s in SPLITS} for t, rows in tasks.items()}


def _manifest(params, task_counts):
    """Manifest dict: parameters, clip geometry, per-task classes/counts and split rules."""
    manifest = {"params": params, "sample_rate": SAMPLE_RATE}
    for kind, samples in (("pretrain", PRETRAIN_SAMPLES), ("labelled", LABELLED_SAMPLES)):
        manifest[kind] = {
            "csv": f"{kind}.csv",
            "count": params[f"num_{kind}"],
            "clip_samples": samples,
            "clip_seconds": samples / SAMPLE_RATE,
        }
    classes = {"timbre": TIMBRES, "pitch": PITCH_CLASSES, "event": EVENT_TYPES}
    manifest["tasks"] = {
        task: {"csv": f"tasks/{task}.csv", "classes": list(names), "counts": task_counts[task]}
        for task, names in classes.items()
    }
    manifest["split_rules"] = {event: split_intervals(event) for event in EVENT_TYPES}
    manifest["tagging"] = {
        "count": params["num_tagging"],
        "clip_samples": PRETRAIN_SAMPLES,
        "classes": list(TAGGING_CLASSES),
        "csv": {split: f"tagging/{split}.csv" for split in TAGGING_SPLITS},
    }
    return manifest


def _run_jobs(jobs, num_workers):
    """Run _build over jobs in order, serially or in a spawn pool (safe next to threaded JAX)."""
    if num_workers <= 0:
        return [_build(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        return pool.map(_build, jobs, chunksize=max(1, len(jobs) // (8 * num_workers)))


def generate(
    out_dir,
    num_pretrain=1000,
    num_labelled=DEFAULT_LABELLED,
    seed=0,
    fmt="flac",
    num_workers=0,
    force=False,
    num_tagging=0,
):
    """Write the demo corpus into ``out_dir`` (skipped if an identical one is already there).

    Regenerating replaces ``out_dir``'s pretrain/, labelled/ and tasks/ folders.

    Args:
        fmt: "flac" or "wav" (both PCM_16).
        num_workers: worker processes for synthesis/encoding; 0 runs in-process. Output is
            byte-identical for any value.
        force: regenerate even if ``manifest.json`` matches these parameters.
        num_tagging: multi-label mixtures (0, or at least MIN_TAGGING).

    Returns:
        The manifest dict (also saved as ``out_dir/manifest.json``).
    """
    if fmt not in ("flac", "wav"):
        raise ValueError(f"fmt must be 'flac' or 'wav', got {fmt!r}")
    if 0 < num_tagging < MIN_TAGGING:
        raise ValueError(f"num_tagging must be 0 or >= {MIN_TAGGING}, got {num_tagging}")
    out = Path(out_dir)
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_pretrain": num_pretrain,
        "num_labelled": num_labelled,
        "num_tagging": num_tagging,
        "format": fmt,
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == params:
            print(f"demo corpus already present in {out} with the same parameters; skipping")
            return manifest
    schedule = labelled_schedule(num_labelled)
    start = time.perf_counter()
    # Drop the manifest first so an interrupted regeneration never looks complete.
    manifest_path.unlink(missing_ok=True)
    for sub in ("pretrain", "labelled", "tasks", "tagging/train", "tagging/eval"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    jobs = [(str(out), "pretrain", seed, i, None, fmt) for i in range(num_pretrain)]
    jobs += [(str(out), "labelled", seed, i, slot, fmt) for i, slot in enumerate(schedule)]
    jobs += [
        (str(out), "tagging", seed, i, tagging_split(i, num_tagging), fmt)
        for i in range(num_tagging)
    ]
    rows = _run_jobs(jobs, num_workers)
    num_first = num_pretrain + num_labelled
    task_counts = _write_tables(
        out, rows[:num_pretrain], rows[num_pretrain:num_first], schedule, rows[num_first:]
    )
    manifest = _manifest(params, task_counts)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)  # written last: its presence marks a complete corpus
    print(
        f"demo corpus: {num_pretrain} pretrain + {num_labelled} labelled + {num_tagging} "
        "tagging clips "
        f"({fmt}, seed {seed}) written to {out} in {time.perf_counter() - start:.1f} s"
    )
    return manifest


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""

    return cli.run(_main, argv, prog="python -m matpac_jax.data.demo_corpus")


def _main(argv) -> int:
    parser = cli.ArgumentParser("python -m matpac_jax.data.demo_corpus", __doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_pretrain", type=cli.int_at_least(0), default=1000)
    parser.add_argument(
        "--num_labelled",
        type=cli.int_at_least(MIN_LABELLED),
        default=DEFAULT_LABELLED,
        help=f"at least {MIN_LABELLED}: 3 splits x 24 clips cover every class",
    )
    parser.add_argument(
        "--num_tagging",
        type=cli.int_at_least(0),
        default=DEFAULT_TAGGING,
        help=f"multi-label mixtures for fine-tuning (0, or at least {MIN_TAGGING})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("flac", "wav"), default="flac")
    parser.add_argument(
        "--num_workers", type=cli.int_at_least(0), default=0, help="0: no worker processes"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    if 0 < args.num_tagging < MIN_TAGGING:
        raise cli.UserError(f"--num_tagging {args.num_tagging}: 0, or at least {MIN_TAGGING}")
    out = cli.output_dir(args.out, "--out")  # absolute: the CSVs and workers see one path
    with cli.removed_on_failure(out):  # an interrupted first run leaves no half corpus folder
        cli.make_dir(out, "--out")
        generate(
            out,
            args.num_pretrain,
            args.num_labelled,
            args.seed,
            args.format,
            args.num_workers,
            args.force,
            args.num_tagging,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
