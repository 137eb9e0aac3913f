import csv
import io
import zipfile

import pytest
import torch
import torch.nn.functional as F

from helpers import GPT, TransformerConfig, music


def toy_chorale(steps=24, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(40, 80, (steps, 4), generator=g)
    c[3, 1] = -1  # a rest in the alto
    c[5:9] = c[5]  # a held chord
    return c


def tiny_gpt(block_size=32) -> GPT:
    cfg = TransformerConfig(vocab_size=music.VOCAB_SIZE, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    return GPT(cfg).eval()


# --------------------------------------------------------------------------- encoding


def test_encoding_interleaves_the_voices_and_round_trips():
    c = torch.tensor([[72, 67, 64, 48], [74, -1, 65, 50]])
    tokens = music.encode_chorale(c)
    assert tokens.tolist() == [72, 67, 64, 48, 74, music.REST, 65, 50]
    assert torch.equal(music.decode_chorale(tokens), c)
    c = toy_chorale()
    assert torch.equal(music.decode_chorale(music.encode_chorale(c)), c)


def test_encoding_round_trips_every_real_chorale(mirror):
    splits = {s: music.load_jsb_chorales(s) for s in ("train", "valid", "test")}
    assert [len(v) for v in splits.values()] == [229, 76, 77]
    for chorales in splits.values():
        for c in chorales:
            assert c.dim() == 2 and c.size(1) == 4
            assert torch.equal(music.decode_chorale(music.encode_chorale(c)), c)
    assert splits["train"][0][0].tolist() == [74, 70, 65, 58]


def test_encoding_refuses_bad_input():
    with pytest.raises(ValueError, match="steps, 4"):
        music.encode_chorale(torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="0-127"):
        music.encode_chorale(torch.full((2, 4), 200))
    with pytest.raises(ValueError, match="whole steps"):
        music.decode_chorale(torch.tensor([60, 61, 62]))
    with pytest.raises(ValueError, match="BOS"):
        music.decode_chorale(torch.tensor([music.BOS, 60, 61, 62]))
    with pytest.raises(ValueError, match="split"):
        music.load_jsb_chorales("validation")


def test_batches_are_shifted_windows_that_start_on_a_step():
    chorale = torch.tensor([[60, 61, 62, 63]]).repeat(40, 1)  # voice v always sings 60 + v
    batch = music.chorale_batches([chorale], block_size=16, batch_size=8, transpose=2,
                                  generator=torch.Generator().manual_seed(0))
    x, y = batch(0)
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Position 0 is BOS or the bass (voice 3); with the shift undone, positions 1-4 are S, A, T, B.
    is_bos = x[:, 0] == music.BOS
    shift = torch.where(is_bos, x[:, 1] - 60, x[:, 0] - 63)
    assert (shift.abs() <= 2).all()
    assert torch.equal(x[:, 1:5] - shift[:, None], torch.tensor([60, 61, 62, 63]).expand(8, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        music.chorale_batches([chorale], block_size=15, batch_size=2)
    with pytest.raises(ValueError, match="shorter"):
        music.chorale_batches([chorale], block_size=400, batch_size=2)


# --------------------------------------------------------------------------- likelihoods


def direct_nll(model, chorale):
    seq = torch.cat([torch.tensor([music.BOS]), music.encode_chorale(chorale)])
    logits = model(seq[None, :-1])[0]
    return F.cross_entropy(logits, seq[1:]).item()


def test_chorale_nll_matches_the_direct_computation():
    model = tiny_gpt(block_size=128)
    chorales = [toy_chorale(10, 0), toy_chorale(20, 1)]  # 41 and 81 tokens: each fits in one block
    expected = (direct_nll(model, chorales[0]) * 40 + direct_nll(model, chorales[1]) * 80) / 120
    assert music.chorale_nll(model, chorales) == pytest.approx(expected, rel=1e-5)


def test_chorale_nll_scores_each_token_once_with_sliding_windows():
    model = tiny_gpt(block_size=16)
    chorale = toy_chorale(20)
    seq = torch.cat([torch.tensor([music.BOS]), music.encode_chorale(chorale)])  # 81 tokens, 80 targets
    # stride = block: non-overlapping windows, each token scored with the context of its own window.
    total = 0.0
    for s in range(0, 80, 16):
        logits = model(seq[None, s : s + 16])[0]
        total += F.cross_entropy(logits, seq[s + 1 : s + 17], reduction="sum").item()
    assert music.chorale_nll(model, [chorale], stride=16) == pytest.approx(total / 80, rel=1e-5)
    # Overlapping windows score each token once too: a finite mean of the same magnitude.
    assert music.chorale_nll(model, [chorale], stride=8) == pytest.approx(total / 80, rel=0.2)
    with pytest.raises(ValueError, match="stride"):
        music.chorale_nll(model, [chorale], stride=6)


def test_baselines():
    # A chorale holding one chord: repeating the previous step is nearly certain.
    held = torch.tensor([[60, 64, 67, 48]]).repeat(32, 1)
    assert music.repeat_nll([held], [held]) < 0.2
    # Unigram: four equally frequent tokens (plus add-one smoothing over the 129 ids).
    p = 33 / (128 + 129)
    assert music.unigram_nll([held], [held]) == pytest.approx(-torch.log(torch.tensor(p)).item(), rel=1e-6)


def test_baselines_on_the_real_chorales(mirror):
    train, test = music.load_jsb_chorales("train"), music.load_jsb_chorales("test")
    unigram, repeat = music.unigram_nll(train, test), music.repeat_nll(train, test)
    assert 3.0 < unigram < 4.0 and 1.0 < repeat < 1.6  # measured: 3.40 and 1.33 nats per token


# --------------------------------------------------------------------------- generation


def test_generate_chorale_from_scratch_and_from_a_prompt():
    model = tiny_gpt(block_size=16)  # 4 steps per block: generation must slide its context
    g = torch.Generator().manual_seed(0)
    new = music.generate_chorale(model, 10, generator=g)
    assert new.shape == (10, 4) and ((new >= -1) & (new <= 127)).all()
    prompt = toy_chorale(6)
    out = music.generate_chorale(model, 5, prompt, temperature=0.8, top_k=5, generator=g)
    assert out.shape == (11, 4) and torch.equal(out[:6], prompt)


# --------------------------------------------------------------------------- MIDI


def test_midi_written_and_read_back_with_the_same_notes(tmp_path):
    chorale = toy_chorale()
    chorale[:, 1] = chorale[:, 0]  # soprano and alto in unison: two channels keep them apart
    notes = music.chorale_to_notes(chorale, seconds_per_step=0.125)
    assert len(notes) < 4 * len(chorale)  # held notes merged
    path = music.write_midi(notes, tmp_path / "c.mid", program=19)
    back = music.read_midi(path)
    assert [(n.pitch, n.channel, n.velocity) for n in back] == [(n.pitch, n.channel, n.velocity) for n in notes]
    for a, b in zip(back, notes, strict=True):
        assert a.start == pytest.approx(b.start, abs=1e-3) and a.end == pytest.approx(b.end, abs=1e-3)
    assert music.read_midi(path.read_bytes()) == back  # bytes work too
    with pytest.raises(ValueError, match="invalid note"):
        music.write_midi([music.Note(60, 1.0, 0.5)], tmp_path / "bad.mid")


def test_note_events_round_trip():
    notes = [music.Note(60, 0.0, 0.5, 100), music.Note(64, 0.0, 0.25, 64), music.Note(67, 0.51, 1.5, 30)]
    tokens = music.encode_notes(notes)
    assert tokens.shape == (12,) and tokens.max() < music.EVENT_BOS
    back = music.decode_notes(tokens)
    assert [n.pitch for n in back] == [60, 64, 67]
    for a, b in zip(back, notes, strict=True):
        assert abs(a.velocity - b.velocity) <= 2
        assert a.start == pytest.approx(b.start, rel=0.06, abs=1e-9)  # bins are ~9% apart
        assert a.end - a.start == pytest.approx(b.end - b.start, rel=0.06)
    with pytest.raises(ValueError, match="4 tokens"):
        music.decode_notes(torch.tensor([60, 60, 60, 60]))


def test_maestro_loader_reads_a_zip_laid_out_like_maestro(tmp_path):
    notes = [music.Note(60, 0.0, 0.5, 90), music.Note(62, 0.5, 1.0, 70), music.Note(64, 1.0, 2.0, 50)]
    midi = music.write_midi(notes, tmp_path / "piece.midi").read_bytes()
    table = io.StringIO()
    writer = csv.DictWriter(table, ["canonical_title", "split", "midi_filename"])
    writer.writeheader()
    writer.writerow({"canonical_title": "a", "split": "train", "midi_filename": "2018/a.midi"})
    writer.writerow({"canonical_title": "b", "split": "test", "midi_filename": "2018/b.midi"})
    with zipfile.ZipFile(tmp_path / "maestro.zip", "w") as z:
        z.writestr("maestro-v3.0.0/maestro-v3.0.0.csv", table.getvalue())
        z.writestr("maestro-v3.0.0/2018/a.midi", midi)
        z.writestr("maestro-v3.0.0/2018/b.midi", midi)
    train = music.read_maestro_zip(tmp_path / "maestro.zip", "train")
    assert len(train) == 1 and torch.equal(train[0], music.encode_notes(notes))
    with pytest.raises(ValueError, match="split"):
        music.read_maestro_zip(tmp_path / "maestro.zip", "valid")


def test_maestro_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TFS_OFFLINE", "1")
    from helpers.data import OfflineError

    with pytest.raises(OfflineError, match="TFS_OFFLINE"):
        music.load_maestro()


def test_synthesize():
    audio = music.synthesize([music.Note(69, 0.0, 0.5), music.Note(72, 0.25, 1.0)], sample_rate=8000, tail=0.5)
    assert audio.shape == (12000,) and audio.dtype.name == "float32"
    assert 0.5 < abs(audio).max() <= 0.9 + 1e-6 and abs(audio[-100:]).max() < 1e-3


def test_event_model_trains_generates_and_writes_midi(tmp_path):
    from helpers import fit

    # A "performance": an arpeggio repeated, as note-event tokens after BOS.
    notes = [music.Note(60 + 4 * (i % 3), 0.25 * i, 0.25 * i + 0.2, 80) for i in range(40)]
    sequence = torch.cat([torch.tensor([music.EVENT_BOS]), music.encode_notes(notes)])
    cfg = TransformerConfig(vocab_size=music.EVENT_VOCAB_SIZE, block_size=32, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(0)
    history = fit(model, music.token_batches([sequence], 32, 8, generator=g), steps=25, lr=3e-3,
                  progress=False, device="cpu")
    assert history.train_loss[-1] < 0.7 * history.train_loss[0]
    tokens = music.generate_events(model, 7, temperature=0.5, generator=g)
    assert tokens.shape == (28,)
    sampled = music.decode_notes(tokens)  # every slot holds a valid id: it always decodes
    assert len(sampled) == 7 and {n.pitch for n in sampled} <= set(range(128))
    back = music.read_midi(music.write_midi(sampled, tmp_path / "gen.mid"))
    assert sorted(n.pitch for n in back) == sorted(n.pitch for n in sampled)
    with pytest.raises(ValueError, match="positions"):
        music.generate_events(model, 8)
