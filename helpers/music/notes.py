"""Notes in seconds, MIDI files (written and read with ``mido``) and a tiny synthesizer to listen with.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .chorales import VOICES

# --------------------------------------------------------------------------- notes and MIDI


class Note(NamedTuple):
    pitch: int  # MIDI 0-127
    start: float  # seconds
    end: float  # seconds
    velocity: int = 80  # 1-127
    channel: int = 0  # MIDI channel 0-15 (a chorale puts each voice on its own)


def chorale_to_notes(steps: torch.Tensor, seconds_per_step: float = 0.15, velocity: int = 80) -> list[Note]:
    """(T, 4) pitches -> notes, voice v on MIDI channel v (two voices may sing the same pitch at
    once). A voice holding the same pitch on consecutive steps is one note: the 16th-note grid cannot
    tell a held note from a repeated one, and we choose held."""
    steps = torch.as_tensor(steps).tolist()
    notes = []
    for v in range(VOICES):
        start = 0
        for t in range(1, len(steps) + 1):
            if t == len(steps) or steps[t][v] != steps[start][v]:
                if steps[start][v] >= 0:
                    notes.append(Note(steps[start][v], start * seconds_per_step, t * seconds_per_step, velocity, v))
                start = t
    return sorted(notes, key=lambda n: (n.start, n.channel, n.pitch))


def write_midi(notes: list[Note], path, *, bpm: float = 120.0, ticks_per_beat: int = 480, program: int = 0) -> Path:
    """Write notes to a one-track MIDI file with ``mido`` (times rounded to the nearest tick), every
    channel playing General MIDI ``program`` (0: piano, 19: church organ)."""
    import mido

    if not notes:
        raise ValueError("no notes to write")
    tempo = mido.bpm2tempo(bpm)  # microseconds per beat
    ticks = lambda seconds: round(mido.second2tick(seconds, ticks_per_beat, tempo))
    events = []  # (tick, order, message): note-offs sort before note-ons at the same tick
    for n in notes:
        if not (0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and 0 <= n.channel <= 15 and n.end > n.start >= 0):
            raise ValueError(f"invalid note {n}: pitch 0-127, velocity 1-127, channel 0-15 and end > start >= 0")
        events.append((ticks(n.start), 1, mido.Message("note_on", note=n.pitch, velocity=n.velocity, channel=n.channel)))
        events.append((ticks(n.end), 0, mido.Message("note_off", note=n.pitch, velocity=0, channel=n.channel)))
    channels = sorted({n.channel for n in notes})
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo)]
                           + [mido.Message("program_change", program=program, channel=c) for c in channels])
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mido.MidiFile(tracks=[track], ticks_per_beat=ticks_per_beat).save(path)
    return path


def read_midi(source) -> list[Note]:
    """Notes of a MIDI file (a path, or bytes) read with ``mido``, in seconds, sorted by start.
    Every track is merged; a note-on is closed by the next note-off (or note-on) of its pitch and
    channel. The sustain pedal is ignored."""
    import mido

    midi = mido.MidiFile(file=io.BytesIO(source)) if isinstance(source, bytes) else mido.MidiFile(str(source))
    notes, sounding, now = [], {}, 0.0
    for msg in midi:  # merged tracks; msg.time is the delta in seconds, tempo changes applied
        now += msg.time
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if key in sounding:  # a note-off, or a new note-on, ends the sounding note
            start, velocity = sounding.pop(key)
            if now > start:
                notes.append(Note(msg.note, start, now, velocity, msg.channel))
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[key] = (now, msg.velocity)
    return sorted(notes, key=lambda n: (n.start, n.channel, n.pitch))


# --------------------------------------------------------------------------- listening and looking


def synthesize(notes: list[Note], sample_rate: int = 16000, tail: float = 0.5) -> np.ndarray:
    """A toy organ: each note a sum of three harmonics under an attack-decay-release envelope.
    Returns float32 samples in [-1, 1] to play with ``IPython.display.Audio(samples, rate=sample_rate)``."""
    if not notes:
        return np.zeros(int(tail * sample_rate), dtype=np.float32)
    length = int((max(n.end for n in notes) + tail) * sample_rate)
    out = np.zeros(length, dtype=np.float64)
    release = 0.08
    for n in notes:
        duration = n.end - n.start + release
        t = np.arange(int(duration * sample_rate)) / sample_rate
        freq = 440.0 * 2 ** ((n.pitch - 69) / 12)
        wave = sum(a * np.sin(2 * math.pi * k * freq * t) for k, a in ((1, 1.0), (2, 0.4), (3, 0.2)))
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-1.5 * t)  # 10 ms attack, gentle decay
        envelope *= np.clip((duration - t) / release, 0.0, 1.0)  # release after the note ends
        i = int(n.start * sample_rate)
        out[i : i + len(t)] += (n.velocity / 127) * wave * envelope
    return (0.9 * out / max(1e-9, np.abs(out).max())).astype(np.float32)
