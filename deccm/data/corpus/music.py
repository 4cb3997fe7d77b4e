"""Render a music21 corpus piece into a short real audio track and measure its musical properties.

One track = the opening of a piece from the bar where its last voice enters (looped if
the piece is shorter), arranged for an ensemble drawn from its genre group's palette,
played at an assigned tempo and dynamic level, written as a Standard MIDI file
(pretty-midi), synthesised with tinysoundfont through the General-MIDI soundfont that
pretty-midi ships (TimGM6mb.sf2), then encoded to MP3 with imageio-ffmpeg's ffmpeg.

The properties the planted relation uses are *measured from what was rendered*:

* ``tempo_bpm``: beats per minute read back from the written MIDI file (quarter-note
  tempo ÷ the time signature's beat length in quarters, so a 6/8 jig counts dotted quarters);
* ``mode``: major / minor from music21's key analysis (Krumhansl-Schmuckler, Aarden-Essen profiles) of the
  excerpt's notes, with its correlation coefficient;
* ``onsets_per_s``: distinct note onsets per second of the excerpt (rhythmic activity);
* ``rms_db``: loudness of the synthesised audio (dBFS), which follows the assigned
  dynamic level and the instruments' own loudness in the soundfont;
* ``voices``: mean number of simultaneously sounding notes (the musical texture).

``deccm.data.corpus.relation`` turns these into the music property vector.
"""
from __future__ import annotations

import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deccm.data.corpus.catalog import Piece, describe


SAMPLE_RATE = 22_050
FADE_OUT_S = 1.0
MAX_PARTS = 15  # MIDI has 16 channels and channel 10 is percussion
GAIN_DB = -6.0  # synth gain: headroom for four-part textures
MIN_NOTES = 6  # an excerpt with fewer is not a usable track (e.g. a rest-heavy opening)

# per genre group: ensemble name -> (GM programs cycled over the parts, program doubling the
# top part an octave lower, or None). Programs are 0-based General-MIDI numbers.
ENSEMBLES: dict[str, dict[str, tuple[tuple[int, ...], int | None]]] = {
    "folk-dance": {"fiddle": ((110,), None), "accordion": ((21,), None), "flute": ((73,), None), "banjo": ((105,), None),
                   "tin whistle": ((78,), None), "fiddle and guitar": ((110,), 25), "harmonica": ((22,), None),
                   "flute and harp": ((73,), 46)},
    "classical-era": {"string quartet": ((40, 40, 41, 42), None), "piano": ((0,), None),
                      "wind quartet": ((73, 68, 71, 70), None), "harpsichord": ((6,), None)},
    "romantic": {"piano": ((0,), None), "string orchestra": ((48,), None), "clarinet and piano": ((71, 0, 0), None),
                 "cello and piano": ((42, 0, 0), None), "horn and strings": ((60, 48, 48), None)},
    "chorale": {"church organ": ((19,), None), "choir": ((52,), None), "string quartet": ((40, 40, 41, 42), None),
                "brass quartet": ((56, 56, 57, 58), None), "woodwinds": ((73, 68, 71, 70), None)},
    "renaissance": {"choir": ((52, 53), None), "recorder consort": ((74, 74, 74, 74, 74), None),
                    "viol consort": ((41, 41, 42, 42, 43), None), "reed organ": ((20,), None)},
    "medieval": {"recorder and lute": ((74, 24, 24), None), "harp": ((46,), None), "shawm band": ((68, 69, 70), None),
                 "reed organ": ((20,), None), "voices and organ": ((52, 52, 20), None)},
}

# per genre group: tempo range in beats per minute (beat = the time signature's beat)
TEMPO_RANGE = {"folk-dance": (96, 160), "classical-era": (60, 150), "romantic": (56, 132), "chorale": (56, 100),
               "renaissance": (44, 96), "medieval": (52, 120)}
VELOCITY_RANGE = (50, 112)  # assigned dynamic level, pp-ish to ff-ish


@dataclass(frozen=True)
class TrackJob:
    """Everything a worker needs to render one track (picklable)."""

    index: int
    piece: Piece
    tempo_bpm: float
    velocity: int
    ensemble: str
    duration_s: float
    seed: int


@dataclass
class Track:
    """One rendered track: metadata, assignment, measured properties, files and timings."""

    index: int
    genre: str
    title: str
    artist: str
    source: str
    licence: str
    ensemble: str
    programs: list[int]
    duration_s: float
    velocity: int
    tempo_bpm: float
    beat_quarters: float
    key: str
    mode: str
    key_correlation: float
    onsets_per_s: float
    voices: float
    rms_db: float
    n_parts: int
    midi: str  # file name inside the track directory
    audio: str
    render_s: float
    encode_s: float


def soundfont_path() -> Path:
    """The General-MIDI soundfont inside the pretty-midi package."""
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def assign(index: int, piece: Piece, rng: np.random.Generator, duration_s: float, seed: int) -> TrackJob:
    """Draw a track's tempo, dynamic level and ensemble from its genre group's ranges."""
    lo, hi = TEMPO_RANGE[piece.genre]
    names = sorted(ENSEMBLES[piece.genre])
    return TrackJob(index=index, piece=piece, tempo_bpm=float(round(np.exp(rng.uniform(np.log(lo), np.log(hi))), 1)),
                    velocity=int(rng.integers(VELOCITY_RANGE[0], VELOCITY_RANGE[1] + 1)),
                    ensemble=names[int(rng.integers(len(names)))], duration_s=duration_s, seed=seed)


def _part_notes(flat: Any, q0: float, q1: float) -> tuple[list[tuple[float, float, int]], list[Any]]:
    """(start, end, midi pitch) of a flattened part's notes starting in [q0, q1), in quarters from q0, ties merged;
    plus the note objects (for key analysis)."""
    notes: list[list[float]] = []
    objs: list[Any] = []
    open_ties: dict[int, int] = {}
    for n in flat.notes:
        start = float(n.offset)
        if start >= q1:
            break
        ql = float(n.duration.quarterLength)
        if start < q0 or ql <= 0:  # before the excerpt, or a grace note
            continue
        objs.append(n)
        tie = n.tie.type if n.tie is not None else None
        for p in n.pitches:
            m = int(p.midi)
            if tie in ("stop", "continue") and m in open_ties:
                notes[open_ties[m]][1] = start + ql - q0
                if tie == "stop":
                    del open_ties[m]
                continue
            notes.append([start - q0, start + ql - q0, m])
            if tie in ("start", "continue"):
                open_ties[m] = len(notes) - 1
    return [(s, min(e, q1 - q0), int(m)) for s, e, m in notes], objs


def excerpt_start(flats: list[Any], bar_q: float, piece_q: float) -> float:
    """Where the excerpt begins: the bar in which the last voice enters (at most a quarter into the piece).

    Imitative polyphony opens with one voice in long notes; starting once every voice
    sounds gives a short excerpt the piece's real texture.
    """
    firsts = [float(f.notes.first().offset) for f in flats if f.notes.first() is not None]
    if not firsts:
        return 0.0
    q0 = min(max(firsts), 0.25 * piece_q)
    return float(np.floor(q0 / bar_q) * bar_q) if bar_q > 0 else 0.0


def _midi(parts: list[list[tuple[float, float, int]]], programs: list[int], sec_per_q: float, velocity: int,
          beat_q: float, loop_q: float, q_end: float, rng: np.random.Generator) -> Any:
    """A pretty-midi score of the excerpt, looping the piece (every ``loop_q`` quarters) up to ``q_end``."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=60.0 / sec_per_q)
    copies = int(np.ceil(q_end / loop_q)) if loop_q > 0 else 1
    for i, notes in enumerate(parts):
        inst = pretty_midi.Instrument(program=programs[i])
        lead = 6 if i == 0 else 0
        for k in range(copies):
            for s, e, m in notes:
                s, e = s + k * loop_q, e + k * loop_q
                if s >= q_end:
                    continue
                accent = 6 if abs(s / beat_q - round(s / beat_q)) < 1e-6 else 0
                v = int(np.clip(velocity + lead + accent + rng.integers(-5, 6), 1, 127))
                inst.notes.append(pretty_midi.Note(velocity=v, pitch=m, start=s * sec_per_q, end=min(e, q_end) * sec_per_q))
        pm.instruments.append(inst)
    return pm


def synthesize(midi_bytes: bytes, duration_s: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 audio of the MIDI's first ``duration_s`` seconds, faded out at the end."""
    import tinysoundfont

    synth = tinysoundfont.Synth(gain=GAIN_DB, samplerate=sample_rate)
    synth.sfload(str(soundfont_path()))
    seq = tinysoundfont.Sequencer(synth)
    seq.add(tinysoundfont.midi.load_memory(midi_bytes))
    n = int(round(duration_s * sample_rate))
    stereo = np.frombuffer(synth.generate(n), dtype=np.float32).reshape(-1, 2)
    mono = stereo.mean(axis=1)
    fade = min(n, int(FADE_OUT_S * sample_rate))
    mono[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    peak = float(np.abs(mono).max()) if n else 0.0
    if peak > 0.98:  # rare: dense fortissimo textures; scaling keeps the relative loudness order
        mono *= 0.98 / peak
    return mono


def encode_mp3(samples: np.ndarray, dest: Path, sample_rate: int = SAMPLE_RATE) -> None:
    """Encode mono float32 samples to VBR MP3 (LAME quality 4, about 50 kbit/s) with imageio-ffmpeg's binary.

    MP3 rather than Vorbis: half the encode time here, and every browser plays it (the demo app).
    """
    from deccm.data.corpus.video import FFMPEG_TIMEOUT_S, ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
           "-i", "pipe:0", "-c:a", "libmp3lame", "-q:a", "4", "-fflags", "+bitexact", "-flags:a", "+bitexact", str(dest)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(samples, dtype="<f4").tobytes(), capture_output=True,
                          timeout=FFMPEG_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not encode {dest.name}: {proc.stderr.decode(errors='replace').strip()}")


def render_track(job: TrackJob, out_dir: str) -> Track:
    """Parse, arrange, synthesise, measure and encode one track into ``out_dir`` (runs in a worker)."""
    from music21 import converter, meter, stream

    t0 = time.perf_counter()
    rng = np.random.default_rng([job.seed, job.index])
    score = converter.parse(str(job.piece.path), forceSource=True, storePickle=False)  # no pickle cache: no hidden state
    if not hasattr(score, "parts") or isinstance(score, stream.Opus):
        raise ValueError(f"{job.piece.rel}: not a single score")
    ts = score.recurse().getElementsByClass(meter.TimeSignature).first()
    beat_q = float(ts.beatDuration.quarterLength) if ts is not None else 1.0
    bar_q = float(ts.barDuration.quarterLength) if ts is not None else 4.0
    sec_per_q = 60.0 / (job.tempo_bpm * beat_q)
    q_end = job.duration_s / sec_per_q
    flats = [part.flatten() for part in list(score.parts)[:MAX_PARTS]]
    q0 = excerpt_start(flats, bar_q, float(score.highestTime))
    parts, objs = [], []
    for flat in flats:
        notes, o = _part_notes(flat, q0, q0 + q_end)
        if notes:
            parts.append(notes)
            objs.extend(o)
    if sum(len(p) for p in parts) < MIN_NOTES:
        raise ValueError(f"{job.piece.rel}: fewer than {MIN_NOTES} notes in the excerpt")
    programs_cycle, double = ENSEMBLES[job.piece.genre][job.ensemble]
    programs = [programs_cycle[i % len(programs_cycle)] for i in range(len(parts))]
    if double is not None:
        parts.append([(s, e, m - 12) for s, e, m in parts[0] if m >= 24])
        programs.append(double)
    loop_q = float(max(e for p in parts for _, e, _ in p))
    pm = _midi(parts, programs, sec_per_q, job.velocity, beat_q, loop_q, q_end, rng)
    buf = io.BytesIO()
    pm.write(buf)
    midi_bytes = buf.getvalue()
    audio = synthesize(midi_bytes, job.duration_s)

    excerpt = stream.Stream()
    for o in objs:
        excerpt.insert(float(o.offset), o)
    k = excerpt.analyze("key")
    # measured from the written MIDI and the synthesised audio
    import pretty_midi

    back = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
    quarter_bpm = float(back.get_tempo_changes()[1][0])
    onsets = np.unique(np.round([n.start for inst in back.instruments for n in inst.notes if n.start < job.duration_s], 2))
    sounding = sum(min(n.end, job.duration_s) - n.start for inst in back.instruments for n in inst.notes if n.start < job.duration_s)
    body = audio[: max(1, len(audio) - int(FADE_OUT_S * SAMPLE_RATE))]
    rms_db = float(20 * np.log10(np.sqrt(np.mean(body.astype(np.float64) ** 2)) + 1e-9))
    render_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    out = Path(out_dir)
    stem = f"{job.index:04d}"
    (out / f"{stem}.mid").write_bytes(midi_bytes)
    encode_mp3(audio, out / f"{stem}.mp3")
    md = score.metadata
    fields = (md.bestTitle, md.composer, md.copyright) if md is not None else (None, None, None)
    meta = describe(job.piece, *(str(v) if v else None for v in fields))
    return Track(
        index=job.index, genre=job.piece.genre, **meta, ensemble=job.ensemble, programs=programs, duration_s=job.duration_s,
        velocity=job.velocity, tempo_bpm=round(quarter_bpm / beat_q, 2), beat_quarters=beat_q, key=str(k),
        mode=str(k.mode), key_correlation=round(float(k.correlationCoefficient), 3),
        onsets_per_s=round(len(onsets) / job.duration_s, 3), voices=round(sounding / job.duration_s, 3),
        rms_db=round(rms_db, 2), n_parts=len(parts), midi=f"{stem}.mid", audio=f"{stem}.mp3",
        render_s=render_s, encode_s=time.perf_counter() - t1,
    )


def worker_init() -> None:
    """Quiet music21's warnings about odd encodings in the worker (a skipped file is logged by the caller)."""
    import warnings

    warnings.filterwarnings("ignore")
