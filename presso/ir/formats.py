"""Recognising model files that are not ONNX, so that a load error can say what they are.

A TFLite model, a PyTorch checkpoint or an ONNX Runtime ``.ort`` file handed to ``presso``
as if it were ONNX fails to parse as a protobuf; "the protobuf does not parse" is true but
useless. :func:`identify_foreign_format` looks at the first bytes (and, for zip archives, the
member names) and returns what the file is and how to get an ONNX model from it.

Needs: nothing but the file. Reads at most a few KiB, plus a zip archive's directory.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

_HEAD_BYTES = 4096


@dataclass(frozen=True)
class ForeignFormat:
    """A recognised non-ONNX format: what it is and what the user can do about it."""

    what: str  # e.g. "a TFLite model (FlatBuffer)"
    hint: str


def identify_foreign_format(path: Path) -> ForeignFormat | None:
    """What the file at ``path`` is when it is a known non-ONNX format, else None."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if head[4:8] == b"TFL3":
        return ForeignFormat("a TFLite model (FlatBuffer with identifier 'TFL3')",
                             "convert it to ONNX first, e.g. with tf2onnx (python -m tf2onnx.convert --tflite ...)")
    if head[4:8] == b"ORTM":
        return ForeignFormat("an ONNX Runtime optimized model (.ort format)",
                             "an .ort file cannot be turned back into ONNX: use the .onnx model it was "
                             "converted from")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _identify_zip(path)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return ForeignFormat("a Python pickle (e.g. a legacy torch.save checkpoint)",
                             "load it in PyTorch and export it with torch.onnx.export(model, example_inputs, "
                             "'model.onnx')")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return ForeignFormat("an HDF5 file (e.g. a Keras .h5 model)",
                             "convert it to ONNX first, e.g. with tf2onnx (python -m tf2onnx.convert --keras ...)")
    if head.startswith(b"GGUF"):
        return ForeignFormat("a GGUF file (llama.cpp weights)", "Presso reads ONNX models only; export the "
                             "original model to ONNX")
    if head.startswith(b"\x93NUMPY"):
        return ForeignFormat("a NumPy .npy array, not a model",
                             "pass arrays as data (--data), and the .onnx model as the model")
    if _is_safetensors(head, path):
        return ForeignFormat("a safetensors weight file (weights only, no graph)",
                             "load the weights into the model in PyTorch and export it with torch.onnx.export")
    return None


def _identify_zip(path: Path) -> ForeignFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return ForeignFormat("a damaged zip archive", "re-download or re-create the file")
    basenames = {name.rsplit("/", 1)[-1] for name in names}
    # TorchScript archives hold a data.pkl too: look for their code first.
    if "constants.pkl" in basenames or any("/code/" in f"/{name}" for name in names):
        return ForeignFormat("a TorchScript model (torch.jit.save zip archive)",
                             "load it with torch.jit.load and export it with torch.onnx.export")
    if "data.pkl" in basenames:
        return ForeignFormat("a PyTorch checkpoint (torch.save zip archive)",
                             "load it in PyTorch and export it with torch.onnx.export(model, example_inputs, "
                             "'model.onnx')")
    if "saved_model.pb" in basenames:
        return ForeignFormat("a zipped TensorFlow SavedModel",
                             "unzip it and convert it with tf2onnx (python -m tf2onnx.convert --saved-model DIR)")
    if "config.json" in basenames and any(n.endswith(".weights.h5") for n in basenames):
        return ForeignFormat("a Keras v3 .keras archive",
                             "convert it to ONNX first, e.g. with tf2onnx")
    onnx_members = [name for name in names if name.endswith(".onnx")]
    if onnx_members:
        return ForeignFormat(f"a zip archive holding {len(onnx_members)} .onnx file(s), e.g. '{onnx_members[0]}'",
                             "unzip it and pass the .onnx file inside")
    return ForeignFormat(f"a zip archive of {len(names)} file(s), not an ONNX model",
                         "unzip it and pass the .onnx model it holds")


def _is_safetensors(head: bytes, path: Path) -> bool:
    # 8-byte little-endian header length, then a JSON object describing the tensors.
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    if length > path.stat().st_size - 8 or length > 100 * 2**20:
        return False
    with open(path, "rb") as handle:
        handle.seek(8)
        text = handle.read(length)
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and any(isinstance(v, dict) and "dtype" in v for v in header.values())
