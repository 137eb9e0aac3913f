"""Music: Bach chorales as token sequences, piano performances as note events, MIDI files and a
tiny synthesizer (notebook 08).

* :mod:`~helpers.music.chorales`: JSB Chorales read as one sentence of 130 tokens (the four voices interleaved
  step after step), training windows, likelihood and baselines, sampling, piano rolls;
* :mod:`~helpers.music.notes`: notes in seconds, MIDI files, a synthesizer to listen with;
* :mod:`~helpers.music.events`: MAESTRO piano performances as note events (pitch, time shift, duration,
  velocity), too free for a grid.

Every public name is re-exported here: ``from helpers import music``.
"""

from .chorales import (
    BOS,
    JSB,
    REST,
    VOCAB_SIZE,
    VOICES,
    chorale_batches,
    chorale_nll,
    chorale_sequence,
    decode_chorale,
    encode_chorale,
    generate_chorale,
    load_jsb_chorales,
    plot_piano_roll,
    repeat_nll,
    token_batches,
    transpose_chorale,
    unigram_nll,
)
from .events import (
    DURATION_BINS,
    EVENT_BOS,
    EVENT_OFFSETS,
    EVENT_VOCAB_SIZE,
    MAESTRO,
    SHIFT_BINS,
    VELOCITY_BINS,
    decode_notes,
    encode_notes,
    generate_events,
    load_maestro,
    read_maestro_zip,
)
from .notes import (
    Note,
    chorale_to_notes,
    read_midi,
    synthesize,
    write_midi,
)

__all__ = [
    "BOS", "chorale_batches", "chorale_nll", "chorale_sequence", "chorale_to_notes", "decode_chorale",
    "decode_notes", "DURATION_BINS", "encode_chorale", "encode_notes", "EVENT_BOS", "EVENT_OFFSETS",
    "EVENT_VOCAB_SIZE", "generate_chorale", "generate_events", "JSB", "load_jsb_chorales", "load_maestro",
    "MAESTRO", "Note", "plot_piano_roll", "read_maestro_zip", "read_midi", "repeat_nll", "REST", "SHIFT_BINS",
    "synthesize", "token_batches", "transpose_chorale", "unigram_nll", "VELOCITY_BINS", "VOCAB_SIZE", "VOICES",
    "write_midi",
]
