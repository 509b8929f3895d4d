"""Real models and real data that installed packages ship, for the demo, tests and benchmarks.

Models: magika's ``standard_v3_3`` content-type classifier, PP-OCRv4 text detection and the
PP-OCR mobile direction classifier (from ``rapidocr-onnxruntime``), and the architecture
models under ``onnx/backend/test/data/light/`` in the onnx wheel. Data: magika features of
real files found on this machine, and text images rendered locally (nothing is downloaded).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..ir.errors import PressoError

LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")


def _package_dir(package: str, extra: str = "dev") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PressoError(f"the package '{package}' that ships this model is not installed",
                          hint=f"pip install 'presso[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations)))


def magika_model() -> Path:
    return _package_dir("magika") / "models" / "standard_v3_3" / "model.onnx"


def magika_labels() -> list[str]:
    config = _package_dir("magika") / "models" / "standard_v3_3" / "config.min.json"
    return list(json.loads(config.read_text())["target_labels_space"])


def ppocr_det_model() -> Path:
    return _package_dir("rapidocr_onnxruntime") / "models" / "ch_PP-OCRv4_det_infer.onnx"


def ppocr_cls_model() -> Path:
    return _package_dir("rapidocr_onnxruntime") / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def light_model(name: str) -> Path:
    if name not in LIGHT_MODELS:
        raise PressoError(f"unknown light model '{name}'", hint=f"choose one of {', '.join(LIGHT_MODELS)}")
    return _package_dir("onnx", "") / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def silero_vad_model() -> Path:
    """Silero VAD (from ``silero-vad``): 25 nested If nodes and LSTMs, a real control-flow model."""
    return _package_dir("silero_vad", "train") / "data" / "silero_vad.onnx"


def audio_chunks(count: int, *, samples: int = 512) -> np.ndarray:
    """``count`` consecutive float32 chunks of a real recording (the plucked string that
    CPython's own tests ship), scaled to [-1, 1]: inputs for the voice-activity model."""
    import sysconfig
    import wave

    path = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata" / "pluck-pcm16.wav"
    if not path.is_file():
        raise PressoError("the recording that CPython's tests ship is missing", where=str(path),
                          hint="install a Python build that includes its test package")
    with wave.open(str(path)) as audio:
        frames = np.frombuffer(audio.readframes(audio.getnframes()), dtype="<i2")
        frames = frames.reshape(-1, audio.getnchannels())[:, 0].astype(np.float32) / 32768.0
    needed = count * samples
    frames = np.resize(frames, needed) if frames.size < needed else frames[:needed]
    return frames.reshape(count, samples)


# ---- magika features of real files ----------------------------------------------------------
_BEG, _END, _BLOCK, _PAD = 1024, 1024, 4096, 256


def magika_features(path: str | Path) -> np.ndarray:
    """The model input for one file: 1024 leading + 1024 trailing bytes (stripped, padded).

    Follows magika 1.0's feature extraction v2 (``config.min.json`` of ``standard_v3_3``).
    """
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        n = min(_BLOCK, size)
        handle.seek(0)
        beg = handle.read(n)
        handle.seek(size - n)
        end = handle.read(n)
    beg = beg.lstrip()[:_BEG]
    end = end.rstrip()[-_END:] if end.rstrip() else b""
    beg_ints = list(beg) + [_PAD] * (_BEG - len(beg))
    end_ints = [_PAD] * (_END - len(end)) + list(end)
    return np.array(beg_ints + end_ints, dtype=np.int32)


def _sample_roots() -> list[Path]:
    roots = [Path(sys.prefix).parent / "lib", Path(sys.base_prefix) / "lib", Path("/usr/share"),
             Path("/usr/lib"), Path("/etc"), Path("/usr/include")]
    return [r for r in roots if r.is_dir()]


def real_files(count: int, *, seed: int = 0, min_size: int = 64, per_extension: int = 6) -> list[Path]:
    """Up to ``count`` real files from this machine, spread over many file types.

    Deterministic for a given machine and seed: files are ranked by a hash of their path and
    taken round-robin over extensions, ``per_extension`` at a time, so the sample stays varied.
    """
    candidates: dict[str, list[tuple[str, Path]]] = {}
    for root in _sample_roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    if not path.is_file() or path.is_symlink() or path.stat().st_size < min_size:
                        continue
                except OSError:
                    continue
                if not os.access(path, os.R_OK):
                    continue
                key = hashlib.sha1(f"{seed}:{path}".encode()).hexdigest()
                candidates.setdefault(path.suffix.lower() or "<none>", []).append((key, path))
            if sum(len(v) for v in candidates.values()) > 50 * count:
                break
    ranked = {ext: sorted(files) for ext, files in candidates.items()}
    result: list[Path] = []
    start = 0
    while len(result) < count and any(len(files) > start for files in ranked.values()):
        batch = sorted(item for files in ranked.values() for item in files[start:start + per_extension])
        result.extend(path for _, path in batch[: count - len(result)])
        start += per_extension
    return result


def magika_dataset(count: int, *, seed: int = 0, skip: int = 0) -> tuple[np.ndarray, list[Path]]:
    """(features [N, 2048] int32, file paths) for ``count`` real files.

    ``skip`` leaves out the first files of the same ranking, so that ``magika_dataset(n)`` and
    ``magika_dataset(m, skip=n)`` are disjoint (calibration vs evaluation).
    """
    files = real_files(skip + count, seed=seed)[skip:]
    if not files:
        raise PressoError("no readable files found on this machine for magika data")
    return np.stack([magika_features(f) for f in files]), files


# ---- rendered text images for PP-OCR ------------------------------------------------------
_WORDS = ("presso compiles neural networks quantization pruning distillation onnx runtime tvm "
          "invoice total amount date receipt street number 2026 hello world text detection model "
          "classifier angle upright rotated sample line of printed characters 0123456789").split()


def render_text_image(height: int, width: int, *, seed: int = 0, lines: int = 4,
                      rotate_180: bool = False) -> np.ndarray:
    """A BGR uint8 image with printed text lines on a light background (OpenCV's Hershey fonts)."""
    import cv2  # shipped with rapidocr-onnxruntime (the `dev` extra)

    rng = np.random.default_rng(seed)
    background = int(rng.integers(200, 256))
    image = np.full((height, width, 3), background, dtype=np.uint8)
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
             cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN]
    step = height / (lines + 1)
    for i in range(lines):
        text = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
        scale = float(rng.uniform(0.4, 1.0)) * height / 320 * 1.5
        color = tuple(int(c) for c in rng.integers(0, 90, 3))
        origin = (int(rng.integers(2, max(3, width // 8))), int(step * (i + 1)))
        cv2.putText(image, text, origin, fonts[int(rng.integers(len(fonts)))], max(scale, 0.3), color,
                    thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    if rotate_180:
        image = image[::-1, ::-1].copy()
    return image


def ppocr_det_inputs(count: int, *, size: int = 320, seed: int = 0) -> np.ndarray:
    """[count, 3, size, size] float32 det inputs, normalized as rapidocr does ((x/255 − 0.5)/0.5)."""
    images = [render_text_image(size, size, seed=seed + i, lines=int(3 + i % 5)) for i in range(count)]
    batch = np.stack(images).astype(np.float32) / 255.0
    batch = (batch - 0.5) / 0.5
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def ppocr_cls_inputs(count: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([count, 3, 48, 192] float32 cls inputs, labels 0 = upright / 1 = rotated 180°)."""
    images, labels = [], []
    for i in range(count):
        rotated = bool(i % 2)
        images.append(render_text_image(48, 192, seed=seed + i, lines=1, rotate_180=rotated))
        labels.append(int(rotated))
    batch = (np.stack(images).astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), np.array(labels, dtype=np.int64)


def iter_light_models() -> Iterator[tuple[str, Path]]:
    for name in LIGHT_MODELS:
        yield name, light_model(name)
