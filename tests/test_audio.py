import hashlib
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchaudio

from helpers import audio, data, load_checkpoint, save_checkpoint


def tiny_model(**kw) -> audio.AudioClassifier:
    cfg = audio.AudioConfig(n_mels=16, conv_channels=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0, **kw)
    return audio.AudioClassifier(cfg).eval()


def tone(seconds=0.5, rate=8000, freq=440.0):
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * freq * t)


# --------------------------------------------------------------------------- features


PLAIN = dict(pre_emphasis=0, floor_db=None, speech_db=None)  # LogMel without its recording-independence steps


def test_plain_features_are_log_mel_minus_the_clip_mean():
    cfg = audio.AudioConfig(**PLAIN)
    wave = torch.randn(4000) * 0.1
    feats = audio.LogMel(cfg)(wave)
    assert feats.shape == (1 + 4000 // cfg.hop_length, cfg.n_mels)  # (T, F)
    mel = torchaudio.transforms.MelSpectrogram(8000, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
                                               f_max=4000)(wave).add(1e-6).log()
    torch.testing.assert_close(feats, (mel - mel.mean(-1, keepdim=True)).T)
    torch.testing.assert_close(feats.mean(0), torch.zeros(cfg.n_mels), atol=1e-5, rtol=0)


def word(seconds=0.4, rate=8000, pad=400):
    """A zero-mean 'word': noise and a tone under a Hann envelope, with `pad` samples of silence each side."""
    n = int(seconds * rate)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n) / rate
    burst = (0.1 * torch.randn(n, generator=g) + 0.3 * torch.sin(2 * math.pi * 300 * t)) * torch.hann_window(n)
    wave = torch.cat([torch.zeros(pad), burst, torch.zeros(pad)])
    return wave - wave.mean()


def test_features_ignore_gain_dc_offset_and_surrounding_silence():
    cfg = audio.AudioConfig()
    features = audio.LogMel(cfg)
    wave = word()
    feats = features(wave)  # (T, n_mels)
    torch.testing.assert_close(features(8.0 * wave), feats, atol=2e-3, rtol=0)  # a louder recording
    torch.testing.assert_close(features(wave + 0.05), feats, atol=1e-4, rtol=0)  # a microphone with a DC offset
    # 1 s of silence before the word and 0.5 s after it: the word's frames are unchanged (the floor and the
    # mean come from the loudest frames), the new frames sit on the floor.
    longer = features(torch.cat([torch.zeros(8000), wave, torch.zeros(4000)]))
    shift = 8000 // cfg.hop_length
    torch.testing.assert_close(longer[shift : shift + len(feats)], feats, atol=1e-4, rtol=0)
    # Without the speech-only mean, the silence would move every feature of the word.
    plain = audio.LogMel(audio.AudioConfig(speech_db=None))
    moved = plain(torch.cat([torch.zeros(8000), wave, torch.zeros(4000)]))[shift : shift + len(feats)] - plain(wave)
    assert moved.abs().max() > 1.0


def test_noise_floor_bounds_the_range_of_every_band():
    for floor_db in (20.0, 30.0):
        feats = audio.LogMel(audio.AudioConfig(floor_db=floor_db))(word())  # (T, n_mels)
        band_range = feats.amax(0) - feats.amin(0)  # the mean subtraction shifts a band, it does not stretch it
        floor = floor_db * math.log(10) / 10  # dB -> natural log units
        assert (band_range <= floor + 1e-4).all()
        torch.testing.assert_close(band_range.max(), torch.tensor(floor))  # the loudest band spans the whole range
    # Without the floor, digital silence reaches log(1e-6): a range of more than 60 dB.
    bare = audio.LogMel(audio.AudioConfig(floor_db=None))(word())
    assert (bare.amax(0) - bare.amin(0)).max() > 60 * math.log(10) / 10


def test_mfcc_shapes_and_reference():
    cfg = audio.AudioConfig(n_mfcc=13, **PLAIN)
    model = audio.AudioClassifier(cfg)
    wave = torch.randn(3333) * 0.1
    feats = model.featurize([wave])[0]  # the model's features stay log-mel bands
    assert feats.shape == (1 + 3333 // cfg.hop_length, cfg.n_mels)
    mfcc = feats @ model.dct  # (T, 13): what the model reads
    assert mfcc.shape == (42, 13)
    ref = torchaudio.transforms.MFCC(8000, n_mfcc=14, log_mels=True, melkwargs=dict(
        n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, f_max=4000))(wave)[1:]  # (13, T): c1..c13
    torch.testing.assert_close(mfcc, (ref - ref.mean(-1, keepdim=True)).T, atol=1e-4, rtol=1e-4)
    # c0 (the frame's loudness) is left out: scaling a frame's energy does not change what the model reads.
    louder = feats.clone()
    louder[5] += 3.0  # frame 5 about 20 times louder in every band
    torch.testing.assert_close((louder @ model.dct)[5], mfcc[5], atol=1e-5, rtol=0)
    # A batch of waveforms gives a batch of features.
    assert audio.LogMel(cfg)(torch.randn(2, 3333)).shape == (2, 42, cfg.n_mels)


def test_padded_batches_stay_on_the_features_device():
    """Features live where the model is (featurize puts them there): the mask and the augmented batch must too.
    The meta device stands in for a GPU: mixing it with CPU tensors fails as CUDA would."""
    clips = [torch.randn(n, 8, device="meta") for n in (5, 3)]
    x, mask = audio.pad_features(clips)
    assert x.device.type == mask.device.type == "meta" and tuple(mask.shape) == (2, 5)
    for augment in (None, audio.Augment(freq_mask=2, time_mask=2)):  # the augmented batch multiplies by the mask
        x, mask, y = audio.make_batches(clips, [1, 2], 4, torch.Generator().manual_seed(0), augment)(0)
        assert x.device.type == mask.device.type == "meta"


def test_pad_features():
    x, mask = audio.pad_features([torch.ones(3, 2), torch.ones(5, 2)])
    assert x.shape == (2, 5, 2) and mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert x[0, 3:].abs().sum() == 0


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("architecture", audio.ARCHITECTURES)
@pytest.mark.parametrize("lengths, n_mfcc", [([37, 80, 53, 1], 0), ([64, 65, 66, 67], 0), ([9, 30, 2], 8)])
def test_padding_never_changes_a_prediction(lengths, n_mfcc, architecture):
    model = tiny_model(n_mfcc=n_mfcc, architecture=architecture)
    clips = [torch.randn(n, 16) for n in lengths]
    x, mask = audio.pad_features(clips)
    x = x + 100.0 * (~mask)[..., None]  # garbage in the padding: it must be ignored, conv included
    with torch.no_grad():
        batched = model(x, mask)
        alone = torch.cat([model(c[None]) for c in clips])
    torch.testing.assert_close(batched, alone)


def test_causal_classifier_reads_a_class_token_after_the_last_frame():
    # The reference is the seed tutorial's construction for one clip: append the class token at the end of
    # the frames, run the causal GPT, read its last position. Padded in a batch, each clip's token sits after
    # its own last real frame, and the logits are the reference's.
    model = tiny_model(architecture="causal")
    clips = [torch.randn(n, 16) for n in (37, 80, 5)]
    x, mask = audio.pad_features(clips)
    with torch.no_grad():
        batched = model(x, mask)
        for clip, logits in zip(clips, batched, strict=True):
            frames, _ = model.tokens(clip[None], torch.ones(1, len(clip), dtype=torch.bool))  # (1, T', C)
            states = model.decoder(torch.cat([frames, model.cls], dim=1))  # (1, T' + 1, C), causal
            torch.testing.assert_close(logits, model.head(states[0, -1]))
        # Causal: a frame's state depends only on the frames before it, so the last frame's state at
        # position T'-1 changes when it changes, and the first frame's does not.
        frames, _ = model.tokens(clips[0][None], torch.ones(1, 37, dtype=torch.bool))
        before = model.decoder(frames)
        later = frames.clone()
        later[:, -1] += torch.randn(frames.size(-1))  # (not a constant: the LayerNorm would remove it)
        after = model.decoder(later)
        torch.testing.assert_close(after[:, :-1], before[:, :-1])
        assert (after[:, -1] - before[:, -1]).abs().max() > 1e-3
    # The token's position comes from the mask, so the mask must be right padding.
    with pytest.raises(ValueError, match="right padding"):
        model(x, mask.flip(1))


def test_architectures_compare_at_a_similar_size_and_old_checkpoints_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    sizes = {a: sum(p.numel() for p in tiny_model(architecture=a).parameters()) for a in audio.ARCHITECTURES}
    # the same blocks, front end, class token and head; the causal model has one position embedding less
    assert sizes["encoder"] - sizes["causal"] == 16
    with pytest.raises(ValueError, match="architecture"):
        audio.AudioConfig(architecture="rnn")
    # A checkpoint saved before the option existed (no "architecture" in its config) loads as the encoder.
    model = tiny_model()
    path = save_checkpoint(model, "07_old")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["architecture"]
    torch.save(payload, path)
    loaded = load_checkpoint("07_old")
    assert loaded.config.architecture == "encoder"
    x, mask = audio.pad_features([torch.randn(n, 16) for n in (12, 7)])
    torch.testing.assert_close(loaded.eval()(x, mask), model(x, mask))
    causal = tiny_model(architecture="causal")
    save_checkpoint(causal, "07_causal")
    torch.testing.assert_close(load_checkpoint("07_causal").eval()(x, mask), causal(x, mask))


@pytest.mark.parametrize("n_mfcc", [0, 8])
def test_front_end_mask_follows_the_strides(n_mfcc):
    model = tiny_model(n_mfcc=n_mfcc)
    x, mask = audio.pad_features([torch.randn(n, 16) for n in (9, 4, 1)])
    frames, frame_mask = model.tokens(x, mask)
    assert frames.shape == (3, 3, 16)  # 9 -> 5 -> 3 frames
    assert frame_mask.sum(1).tolist() == [3, 1, 1]  # ceil(ceil(n / 2) / 2)


# --------------------------------------------------------------------------- data


def test_fsdd_registry_matches_the_mirror_checksums(mirror):
    sums = {}
    for line in (Path(mirror) / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    files = data.REGISTRY["fsdd"].files
    assert len(files) == 3000
    assert all(sums[f.path] == f.sha256 for f in files)
    assert files[0].url.endswith("/recordings/0_george_0.wav")


def test_fsdd_official_split_and_leave_one_speaker_out(mirror):
    recordings = audio.load_fsdd()
    assert len(recordings) == 3000
    r = recordings[0]
    assert r.waveform.dtype == torch.float32 and r.waveform.dim() == 1 and r.waveform.abs().max() <= 1.0
    train, test = audio.split_fsdd(recordings)
    key = lambda r: (r.digit, r.speaker, r.index)
    assert (len(train), len(test)) == (2700, 300)
    assert not {key(r) for r in train} & {key(r) for r in test}  # no recording in both
    assert {r.index for r in test} == set(range(5))
    assert {(r.digit, r.speaker) for r in test} == {(d, s) for d in range(10) for s in audio.FSDD_SPEAKERS}
    train, test = audio.split_fsdd(recordings, test_speaker="theo")
    assert (len(train), len(test)) == (2500, 500)
    assert {r.speaker for r in test} == {"theo"} and "theo" not in {r.speaker for r in train}
    with pytest.raises(ValueError, match="unknown speaker"):
        audio.split_fsdd(recordings, test_speaker="alice")


def test_validation_split_holds_out_training_recordings_only(mirror):
    train, test = audio.split_fsdd(audio.load_fsdd())
    fit_on, val = audio.validation_split(train)
    key = lambda r: (r.digit, r.speaker, r.index)
    assert (len(fit_on), len(val)) == (2400, 300)
    assert {r.index for r in val} == set(range(5, 10)) and min(r.index for r in fit_on) == 10
    assert not {key(r) for r in val} & ({key(r) for r in fit_on} | {key(r) for r in test})
    counts = Counter((r.digit, r.speaker) for r in val)  # five of every speaker and digit
    assert len(counts) == 60 and set(counts.values()) == {5}
    # With a held-out speaker the validation recordings are the other speakers' index 5-9.
    train, _ = audio.split_fsdd(audio.load_fsdd(), test_speaker="lucas")
    fit_on, val = audio.validation_split(train)
    assert (len(fit_on), len(val)) == (2250, 250) and "lucas" not in {r.speaker for r in val}
    with pytest.raises(ValueError, match="official test split"):
        audio.validation_split(train, indices=range(0, 10))


def test_fsdd_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFS_DATA_MIRROR", str(tmp_path / "mirror"))
    remote = data.REGISTRY["fsdd"].files[0]
    bad = tmp_path / "mirror" / remote.path
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a wav")
    assert hashlib.sha256(b"not a wav").hexdigest() != remote.sha256
    with pytest.raises(data.ChecksumError, match="fsdd"):
        data.fetch_file(remote, "fsdd")


# --------------------------------------------------------------------------- predict


def test_predict_resamples_to_the_model_rate():
    model = tiny_model()
    wave = tone(0.4, 16000)
    expected = model.classify(model.featurize([torchaudio.functional.resample(wave, 16000, 8000)]))[0]
    assert audio.predict(model, wave, 16000) == int(expected)
    assert audio.predict(model, wave.numpy(), 16000) == int(expected)  # numpy works too
    assert audio.predict(model, torch.stack([wave, wave]), 16000) == int(expected)  # (channels, N)
    assert 0 <= audio.predict(model, tone(), 8000) < 10


@pytest.mark.parametrize(
    "waveform, match",
    [
        (torch.zeros(0), "empty"),
        (torch.zeros(4000), "silent"),
        (torch.full((4000,), float("nan")), "NaN"),
        (torch.ones(4000, dtype=torch.int16), "float samples"),
        (torch.randn(1, 2, 4000), r"\(samples,\)"),
        (torch.randn(50) * 0.1, "too short"),
    ],
)
def test_predict_refuses_bad_input(waveform, match):
    with pytest.raises(ValueError, match=match):
        audio.predict(tiny_model(), waveform, 8000)


# --------------------------------------------------------------------------- training and checkpoints


def test_training_learns_and_checkpoint_round_trips(tmp_path, monkeypatch):
    from helpers import fit

    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    # Two "digits": low and high tones of random lengths that fade in and out (a steady tone would be all
    # mean, which the features remove); the tiny model must tell them apart.
    g = torch.Generator().manual_seed(0)
    waves = [tone(0.1 + 0.3 * torch.rand(1, generator=g).item(), freq=300 if i % 2 else 1500) for i in range(16)]
    waves = [w * torch.hann_window(len(w)) for w in waves]
    labels = torch.arange(16) % 2
    model = tiny_model()
    feats = model.featurize(waves)
    history = fit(model, audio.make_batches(feats, labels, 8, g, audio.Augment(0.1, 0.1, 2, 2)), steps=40, lr=3e-3,
                  loss_fn=audio.classification_loss, progress=False, device="cpu")
    assert history.train_loss[-1] < history.train_loss[0]
    assert (model.classify(feats) == labels).float().mean() >= 0.9
    save_checkpoint(model, "07_test")
    loaded = load_checkpoint("07_test")
    assert isinstance(loaded, audio.AudioClassifier) and loaded.config == model.config
    x, mask = audio.pad_features(feats[:5])
    torch.testing.assert_close(loaded(x, mask), model(x, mask))
    assert audio.predict(loaded, waves[0], 8000) == audio.predict(model, waves[0], 8000)


def test_confusion_matrix():
    cm = audio.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), n_classes=3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_loso_benchmark_trains_notebook_07s_recipe():
    # benchmarks/audio_loso.py reads notebook 07's cpu recipe from helpers.recipes, as the notebook does.
    import importlib.util

    from helpers import recipes

    spec = importlib.util.spec_from_file_location(
        "audio_loso", Path(__file__).resolve().parents[1] / "benchmarks" / "audio_loso.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.RECIPE is recipes.AUDIO_CLASSIFICATION["cpu"]
    # Choosing the leave-one-speaker-out recipe never looks at the tested speaker: each one's validation
    # speaker is another, and every speaker validates exactly once.
    held_out = [bench.validation_speaker(s) for s in audio.FSDD_SPEAKERS]
    assert all(v != s for v, s in zip(held_out, audio.FSDD_SPEAKERS, strict=True))
    assert sorted(held_out) == sorted(audio.FSDD_SPEAKERS)
    assert bench.parse_settings(["n_mfcc=13", "architecture=causal"]) == {"n_mfcc": 13, "architecture": "causal"}
