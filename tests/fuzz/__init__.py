"""Differential fuzzing: random valid ONNX graphs (graphs.py) and the onnxruntime oracle (oracle.py)."""
