"""Audio: the Free Spoken Digit Dataset, log-mel / MFCC features, and a spoken-digit classifier.

The classifier is a small convolutional front end over spectrogram frames followed by the shared
:class:`~helpers.model.Encoder` with a class token, the same recipe as a vision transformer with
the image patches replaced by audio frames::

    waveform (N,) --LogMel--> features (T, F) --conv, stride 4--> frames (T/4, C) --Encoder--> logits (10,)

``AudioConfig(architecture="causal")`` swaps the encoder for the shared causal :class:`~helpers.model.GPT`,
as the seed tutorial's first model does: a causal model's position t sees only positions <= t, so its
class token goes *after* the clip's last real frame, the one position that sees the whole clip.

Clips have different lengths, so a batch is padded and carries a padding mask ``(B, T)``
(True = real frame). The front end zeroes the padded frames before every convolution, so they look
exactly like the convolution's own zero padding, and attention never looks at them: a clip gives the
same logits alone and padded in a batch, with either architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from .data import DatasetInfo, RemoteFile, fetch_files, register
from .model import GPT, Encoder, evaluating, init_weights, transformer_config

# --------------------------------------------------------------------------- data

FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_SAMPLE_RATE = 8000
FSDD_PER_SPEAKER = 50  # recordings of each digit by each speaker; index 0-4 is the official test set
FSDD_VALIDATION = range(5, 10)  # the course's validation split: index 5-9, held out of the official training set
# Release v1.0.10: the 3,000 recordings of six speakers (the repository has gained more since)
_FSDD_URL = "https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/v1.0.10/recordings/"


def fsdd_names() -> list[str]:
    """The 3,000 file names ``{digit}_{speaker}_{index}.wav`` in a fixed order (digit, speaker, index)."""
    return [f"{d}_{s}_{i}.wav" for d in range(10) for s in FSDD_SPEAKERS for i in range(FSDD_PER_SPEAKER)]


def _register_fsdd() -> DatasetInfo:
    """Register FSDD: one RemoteFile per recording, its SHA-256 read from the package's data file
    ``helpers/checksums/fsdd.sha256`` (``sha256sum`` format, paths relative to the data set's repository:
    ``cd fsdd && sha256sum -c fsdd.sha256`` checks a copy)."""
    table = resources.files("helpers").joinpath("checksums/fsdd.sha256").read_text()
    digests = dict(reversed(line.split("  ", 1)) for line in table.splitlines() if line.strip())
    names = fsdd_names()
    missing = [n for n in names if f"recordings/{n}" not in digests]
    if missing or len(digests) != len(names):
        raise RuntimeError(f"helpers/checksums/fsdd.sha256 does not list FSDD's {len(names)} recordings "
                           f"(missing {missing[:3]}...); the installed helpers package is damaged")
    files = tuple(RemoteFile(f"fsdd/recordings/{n}", _FSDD_URL + n, digests[f"recordings/{n}"]) for n in names)
    return register(
        DatasetInfo(
            name="fsdd",
            description="Free Spoken Digit Dataset: 3,000 mono 8 kHz recordings of the digits 0-9, "
            "6 speakers x 50 each (CC BY-SA 4.0).",
            homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
            files=files,
        )
    )


class Recording(NamedTuple):
    waveform: torch.Tensor  # (N,) float32 in [-1, 1]
    digit: int
    speaker: str
    index: int  # 0-49; 0-4 is the official test split


def read_audio(path) -> tuple[torch.Tensor, int]:
    """Read an audio file with ``soundfile``: a mono float32 waveform ``(N,)`` in [-1, 1] and its rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    return torch.from_numpy(data.mean(axis=1)), rate


def load_fsdd() -> list[Recording]:
    """All 3,000 FSDD recordings (cache -> mirror -> GitHub, 16 downloads at a time), each checked against
    its SHA-256."""
    info = _FSDD
    out = []
    for remote, path in zip(info.files, fetch_files(info.files, info.name), strict=True):
        waveform, rate = read_audio(path)
        if rate != FSDD_SAMPLE_RATE:
            raise ValueError(f"{remote.path} has sample rate {rate}, expected {FSDD_SAMPLE_RATE}")
        digit, speaker, index = remote.path.rsplit("/", 1)[-1][:-4].split("_")
        out.append(Recording(waveform, int(digit), speaker, int(index)))
    return out


def split_fsdd(recordings: list[Recording], test_speaker: str | None = None):
    """(train, test) lists. The official split puts index 0-4 of every speaker and digit in the test
    set; with ``test_speaker`` the test set is that speaker and the training set the other five.
    Choose settings on :func:`validation_split` of the training list, never on the test list."""
    if test_speaker is None:
        is_test = [r.index < 5 for r in recordings]
    elif test_speaker in FSDD_SPEAKERS:
        is_test = [r.speaker == test_speaker for r in recordings]
    else:
        raise ValueError(f"unknown speaker {test_speaker!r}; FSDD's speakers are {', '.join(FSDD_SPEAKERS)}")
    train = [r for r, t in zip(recordings, is_test, strict=True) if not t]
    test = [r for r, t in zip(recordings, is_test, strict=True) if t]
    return train, test


def validation_split(train: list[Recording], indices=FSDD_VALIDATION):
    """(train, validation) lists from a training list: the recordings whose index is in ``indices``
    (default 5-9: 300 clips, five of every speaker and digit) become the validation set. Apply it to
    the training half of :func:`split_fsdd`, so that no test recording (index 0-4, or the held-out
    speaker) is ever used to choose a setting."""
    indices = set(indices)
    if indices & set(range(5)):
        raise ValueError(f"validation indices {sorted(indices & set(range(5)))} are in the official test split "
                         "(index 0-4); choose indices from 5-49")
    val = [r for r in train if r.index in indices]
    return [r for r in train if r.index not in indices], val


# --------------------------------------------------------------------------- features


@dataclass
class AudioConfig:
    sample_rate: int = FSDD_SAMPLE_RATE
    n_fft: int = 256  # 32 ms analysis window at 8 kHz
    hop_length: int = 80  # 10 ms between frames
    n_mels: int = 40
    # Recording conditions differ more between FSDD's speakers than their voices do; three steps make the
    # features depend on the sound of the digit, not on the microphone (see LogMel). None / 0 turns one off.
    pre_emphasis: float = 0.97  # y[n] = x[n] - 0.97 x[n-1], after removing the DC offset: flattens the spectral tilt
    floor_db: float | None = 30.0  # raise every value more than this many dB below the clip's loudest to that floor
    speech_db: float | None = 30.0  # mean normalisation over the frames within this many dB of the loudest frame
    n_mfcc: int = 0  # 0: the model reads the log-mel bands; > 0: their cepstral coefficients 1..n_mfcc (no c0)
    conv_channels: int = 128
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    max_frames: int = 1024  # longest input in feature frames (10 s at 10 ms)
    n_classes: int = 10
    # "encoder": the bidirectional Encoder, class token first; "causal": the causal GPT, class token after
    # each clip's last real frame (the seed tutorial's GPT-2 classifier).
    architecture: str = "encoder"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}; use one of {', '.join(ARCHITECTURES)}")

    @property
    def n_features(self) -> int:
        return self.n_mfcc or self.n_mels


ARCHITECTURES = ("encoder", "causal")


class LogMel(nn.Module):
    """Waveform ``(..., N)`` -> features ``(..., T, n_mels)``: log-mel energies, made independent of the recording.

    A microphone, its gain and the room change the spectrum as much as a new voice does, so on top of the
    log-mel spectrogram (``torchaudio.transforms.MelSpectrogram``, then a log) this applies four steps,
    three of them settings of :class:`AudioConfig`:

    1. remove the clip's DC offset (its mean sample), then **pre-emphasis** ``x[n] - 0.97 x[n-1]``, a gentle
       high-pass that evens out microphones with more or less bass (``pre_emphasis``, 0 = off);
    2. a **noise floor**: every value more than ``floor_db`` dB below the clip's loudest is raised to that
       floor, so a clip with digital silence and a clip with a hissing microphone look alike between words;
    3. **mean normalisation** (cepstral mean normalisation): subtract each band's mean over the clip's
       frames, which removes a constant gain per band (loudness, the microphone's colouring);
    4. that mean is taken over the **speech frames** only, those within ``speech_db`` dB of the loudest
       frame, so it does not depend on how much silence surrounds the word.

    With those three off (``AudioConfig(pre_emphasis=0, floor_db=None, speech_db=None)``) the features are the
    plain log-mel bands minus their mean over time. T = 1 + N // hop_length.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.config = cfg
        self.transform = torchaudio.transforms.MelSpectrogram(
            cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, f_max=cfg.sample_rate / 2
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.pre_emphasis:
            w = waveform - waveform.mean(dim=-1, keepdim=True)  # DC offset
            waveform = torch.cat([w[..., :1], w[..., 1:] - cfg.pre_emphasis * w[..., :-1]], dim=-1)
        power = self.transform(waveform)  # (..., n_mels, T)
        x = torch.log(power + 1e-6)
        if cfg.floor_db is not None:
            x = torch.maximum(x, x.amax(dim=(-2, -1), keepdim=True) - cfg.floor_db * _NATS_PER_DB)
        if cfg.speech_db is not None:
            energy = torch.log(power.sum(dim=-2) + 1e-10)  # (..., T): each frame's total energy
            speech = energy >= energy.amax(dim=-1, keepdim=True) - cfg.speech_db * _NATS_PER_DB
            weights = speech.unsqueeze(-2).to(x.dtype)  # (..., 1, T)
            mean = (x * weights).sum(dim=-1, keepdim=True) / weights.sum(dim=-1, keepdim=True)
        else:
            mean = x.mean(dim=-1, keepdim=True)
        return (x - mean).transpose(-1, -2)  # (..., T, n_mels)


_NATS_PER_DB = math.log(10) / 10  # a power ratio of 1 dB is a difference of 0.23 in the natural log


def pad_features(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of (T_i, F) -> padded (B, T_max, F) with zeros, and the padding mask (B, T_max), True = real,
    both on the features' device."""
    padded = nn.utils.rnn.pad_sequence(features, batch_first=True)
    lengths = torch.tensor([f.size(0) for f in features], device=padded.device)
    mask = torch.arange(padded.size(1), device=padded.device)[None, :] < lengths[:, None]
    return padded, mask


# --------------------------------------------------------------------------- model


class ConvFrontEnd(nn.Module):
    """Two 1-d convolutions over time, each of stride 2: (B, T, F) -> (B, ceil(ceil(T/2)/2), C).

    Padded frames are zeroed before each convolution. A kernel of 3 with padding 1 and stride 2 makes
    output frame j read input frames 2j-1..2j+1, so the output is real exactly where ``mask[:, ::2]``
    is, and a zeroed padded frame reads as the zero padding a clip alone would get.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        c = cfg.conv_channels
        self.convs = nn.ModuleList([
            nn.Conv1d(cfg.n_features, c, kernel_size=3, stride=2, padding=1),
            nn.Conv1d(c, c, kernel_size=3, stride=2, padding=1),
        ])
        self.proj = nn.Linear(c, cfg.n_embd)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)  # (B, F, T): Conv1d wants channels first
        for conv in self.convs:
            x = x * mask[:, None, :].to(x.dtype)  # padding -> exact zeros
            x = F.gelu(conv(x))  # (B, C, ceil(T / 2))
            mask = mask[:, ::2]
        return self.proj(x.transpose(1, 2)), mask  # (B, T', n_embd), (B, T')


class AudioClassifier(nn.Module):
    """Spoken-digit classifier: LogMel features -> ConvFrontEnd -> transformer with a class token -> logits.

    The transformer is the bidirectional :class:`~helpers.model.Encoder` (``architecture="encoder"``,
    class token first, every frame sees every other) or the causal :class:`~helpers.model.GPT`
    (``architecture="causal"``, class token right after each clip's last real frame, every position sees
    only the past); see :meth:`causal_logits`. ``forward`` takes features (B, T, n_mels) and their padding
    mask; :meth:`featurize` turns waveforms into features and :meth:`classify` features into digits
    (:func:`predict` does both for one recording). The feature transform is part of the model, so a
    checkpoint carries it.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.config = cfg
        self.features = LogMel(cfg)
        # MFCCs are a fixed linear map of the log-mel bands (a DCT), so the model applies it itself: the
        # features, and their augmentation, stay in the mel domain. Coefficient 0 is the frame's mean over
        # the bands, its loudness, which says more about the speaker and the microphone than about the
        # digit, so it is left out: the model reads coefficients 1..n_mfcc.
        dct = torchaudio.functional.create_dct(cfg.n_mfcc + 1, cfg.n_mels, norm="ortho")[:, 1:] if cfg.n_mfcc else None
        self.register_buffer("dct", dct)  # (n_mels, n_mfcc), or None: the model reads the log-mel bands
        self.front = ConvFrontEnd(cfg)
        n_tokens = cfg.max_frames // 4 + 1  # the front end's frames, then the class token
        if cfg.architecture == "encoder":
            self.encoder = Encoder(transformer_config(
                cfg, vocab_size=None, block_size=n_tokens, n_out=cfg.n_classes, cls_token=True,
            ))
        else:  # causal: a GPT without embedding or head (per-position states), our class token and head
            self.decoder = GPT(transformer_config(cfg, vocab_size=None, block_size=n_tokens, n_out=None))
            self.cls = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
            self.head = nn.Linear(cfg.n_embd, cfg.n_classes)
            nn.init.normal_(self.cls, 0.0, 0.02)  # as the Encoder's class token and head
            init_weights(self.head, cfg.n_layer)

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, n_mels), padding_mask (B, T) bool (True = real; None = no padding) -> logits (B, n_classes)."""
        if padding_mask is None:
            padding_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        frames, frame_mask = self.tokens(features, padding_mask)  # (B, T', n_embd)
        if self.config.architecture == "causal":
            return self.causal_logits(frames, frame_mask)
        return self.encoder.classify(frames, padding_mask=frame_mask)

    def causal_logits(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """The causal classifier: frames (B, T, C) and their right-padding mask (B, T) -> logits (B, n_classes).

        Under a causal mask position t attends to positions <= t, so only the last position has seen the
        whole clip: the class token goes there. With right padding a clip's last real frame is at
        ``length - 1``, which differs from clip to clip, so the token is written at position ``length``
        of each row (where the first padded frame, or one extra position, would be) and its state is read
        from there. It sees exactly the clip's frames: the padding comes after it, which a causal model
        never looks at (and the padding mask hides it from the positions after it too).
        """
        B, T, _ = frames.shape
        lengths = frame_mask.sum(1)  # (B,) real frames per clip
        positions = torch.arange(T + 1, device=frames.device)
        if not torch.equal(frame_mask, positions[None, :T] < lengths[:, None]):
            raise ValueError("the causal classifier needs right padding: each row of the padding mask must be "
                             "True for the first frames and False after them (helpers.audio.pad_features)")
        at_cls = positions[None, :] == lengths[:, None]  # (B, T + 1): the class token's position in each row
        h = torch.where(at_cls[..., None], self.cls, F.pad(frames, (0, 0, 0, 1)))  # (B, T + 1, C)
        states = self.decoder(h, padding_mask=F.pad(frame_mask, (0, 1)) | at_cls)  # (B, T + 1, C)
        return self.head(states[torch.arange(B, device=frames.device), lengths])  # (B, n_classes)

    def tokens(self, features: torch.Tensor, padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, n_mels) and their mask (B, T) -> the encoder's input: MFCCs (when configured), then
        the front end: frames (B, T', n_embd) and their mask (B, T'), T' = ceil(ceil(T / 2) / 2)."""
        if self.dct is not None:
            features = features @ self.dct  # (B, T, n_mfcc); padded frames stay zero
        return self.front(features, padding_mask)

    def featurize(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Waveforms (N_i,) at ``config.sample_rate`` -> features (T_i, F), one clip at a time."""
        device = next(self.parameters()).device
        with torch.no_grad():
            return [self.features(w.to(device)) for w in waveforms]

    def classify(self, features: list[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
        """Predicted classes (N,) for a list of feature sequences, in padded batches."""
        device = next(self.parameters()).device
        out = []
        with evaluating(self):
            for i in range(0, len(features), batch_size):
                x, mask = pad_features(features[i : i + batch_size])
                out.append(self(x.to(device), mask.to(device)).argmax(-1).cpu())
        return torch.cat(out)


def make_batches(features: list[torch.Tensor], labels, batch_size: int, generator: torch.Generator | None = None,
                 augment: Augment | None = None):
    """A callable ``step -> (features (B, T, F), mask (B, T), labels (B,))`` of random padded batches,
    for :func:`helpers.fit`, optionally augmented (see :class:`Augment`)."""
    labels = torch.as_tensor(labels)

    def batch(_step):
        idx = torch.randint(len(features), (batch_size,), generator=generator)
        clips = [features[i] for i in idx.tolist()]
        x, mask = augment(clips, generator) if augment is not None else pad_features(clips)
        return x, mask, labels[idx]

    return batch


class Augment(nn.Module):
    """Training-time augmentation of feature clips, so that the model hears more speakers than it has:

    * speaking rate: stretch each clip in time by a random factor in [1 - stretch, 1 + stretch];
    * vocal tract length: stretch the mel axis by a random factor in [1 - warp, 1 + warp] (VTLP,
      Jaitly and Hinton, 2013): a longer vocal tract moves every formant down by the same ratio;
    * SpecAugment (Park et al., 2019): zero a random band of mel channels and a random span of frames.
    """

    def __init__(self, stretch: float = 0.15, warp: float = 0.1, freq_mask: int = 8, time_mask: int = 10):
        super().__init__()
        self.stretch, self.warp = stretch, warp
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)

    def warp_clip(self, clip: torch.Tensor, rate: float, alpha: float) -> torch.Tensor:
        """(T, F) -> (round(T * rate), F), the mel axis read at channel f / alpha (edge channels repeat)."""
        T, n = clip.shape
        image = F.interpolate(clip.T[None, None], size=(round(n * alpha), max(1, round(T * rate))),
                              mode="bilinear", align_corners=False)[0, 0]  # (F * alpha, T * rate)
        image = image[:n] if image.size(0) >= n else F.pad(image[None], (0, 0, 0, n - image.size(0)), mode="replicate")[0]
        return image.T

    def forward(self, clips: list[torch.Tensor], generator: torch.Generator | None = None):
        """A list of (T_i, F) -> augmented, padded (B, T, F) and the padding mask (B, T)."""
        factors = 1 + (2 * torch.rand(len(clips), 2, generator=generator) - 1) * torch.tensor([self.stretch, self.warp])
        x, mask = pad_features([self.warp_clip(c, r, a) for c, (r, a) in zip(clips, factors.tolist(), strict=True)])
        spec = self.time(self.freq(x.transpose(1, 2).unsqueeze(1)))  # (B, 1, F, T): torchaudio's layout
        return spec.squeeze(1).transpose(1, 2) * mask[..., None], mask


def classification_loss(model: AudioClassifier, batch) -> torch.Tensor:
    """Cross-entropy of a (features, mask, labels) batch, the ``loss_fn`` for :func:`helpers.fit`."""
    x, mask, y = batch
    return F.cross_entropy(model(x, mask), y)


def confusion_matrix(predictions, labels, n_classes: int = 10) -> torch.Tensor:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    index = torch.as_tensor(labels) * n_classes + torch.as_tensor(predictions)
    return torch.bincount(index, minlength=n_classes * n_classes).view(n_classes, n_classes)


@torch.no_grad()
def predict(model: AudioClassifier, waveform, sample_rate: int) -> int:
    """The digit spoken in one recording: waveform (N,) (or (channels, N), averaged) at ``sample_rate``,
    resampled to the model's rate when they differ."""
    waveform = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform)
    if not waveform.is_floating_point():
        raise ValueError(f"waveform must hold float samples in [-1, 1], not {waveform.dtype}; "
                         "divide integer PCM by 32768 (or read the file with helpers.audio.read_audio)")
    if waveform.dim() == 2:
        waveform = waveform.mean(0)
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be (samples,) or (channels, samples), not {tuple(waveform.shape)}")
    if waveform.numel() == 0:
        raise ValueError("the waveform is empty: pass at least a few hundred milliseconds of audio")
    if not torch.isfinite(waveform).all():
        raise ValueError("the waveform holds NaN or infinite samples")
    if waveform.abs().max() < 1e-4:
        raise ValueError("the waveform is silent (every sample below 1e-4): there is no digit to recognise")
    cfg = model.config
    waveform = waveform.float()
    if sample_rate != cfg.sample_rate:
        waveform = torchaudio.functional.resample(waveform, int(sample_rate), cfg.sample_rate)
    min_samples = cfg.n_fft // 2 + 1
    if waveform.numel() < min_samples:
        raise ValueError(f"the waveform is too short ({waveform.numel()} samples at {cfg.sample_rate} Hz); "
                         f"pass at least {min_samples} samples")
    features = model.featurize([waveform])
    return int(model.classify(features)[0])


_FSDD = _register_fsdd()
