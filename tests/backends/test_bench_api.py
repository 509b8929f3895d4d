import numpy as np
import onnx
import onnxruntime as ort
import pytest
from backend_models import conv_model, softmax_model

import presso
from presso.backends.benchmark import agreement, bench
from presso.ir import PressoError
from presso.passes.verify import compare_outputs


def _ort(path, x, name="x"):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


@pytest.fixture
def softmax_pair(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(softmax_model(), str(a))
    onnx.save(softmax_model(noise=0.5), str(b))
    x = np.random.default_rng(4).standard_normal((24, 16)).astype(np.float32)
    data = tmp_path / "eval.npz"
    np.savez(data, x=x)
    return a, b, data, x


def test_bench_agreement_and_size_match_an_independent_computation(softmax_pair):
    a, b, data, x = softmax_pair
    report = bench([a, b], data, threads=(1, "all"), runs=3, warmup=1, samples=24)
    ref, cand = _ort(a, x), _ort(b, x)
    base, other = report.rows
    assert (base.name, other.name) == ("a.onnx", "b.onnx")
    assert base.agreement == {"max_abs": 0.0, "cosine": pytest.approx(1.0), "top1": 1.0}
    assert other.agreement["max_abs"] == pytest.approx(float(np.abs(ref - cand).max()), rel=1e-5)
    assert other.agreement["top1"] == pytest.approx(float(np.mean(ref.argmax(1) == cand.argmax(1))))
    assert 0 < other.agreement["top1"] < 1  # the perturbation flips some predictions
    cosine = float(np.dot(ref.ravel(), cand.ravel()) / np.linalg.norm(ref) / np.linalg.norm(cand))
    assert other.agreement["cosine"] == pytest.approx(cosine, rel=1e-6)
    assert base.size_bytes == a.stat().st_size and other.size_bytes == b.stat().st_size
    assert report.samples == 24 and report.threads == ["threads=1", "threads=all"]
    for row in report.rows:
        for key in report.threads:
            assert 0 < row.latency[key]["median_ms"] <= row.latency[key]["p90_ms"]
    assert report.latency_ratio(base, "threads=1") == 1.0
    as_dict = report.as_dict()
    assert as_dict["baseline"] == "a.onnx" and len(as_dict["models"]) == 2
    table = report.table()
    assert "a.onnx" in table and "b.onnx" in table and "top-1" in table


def test_bench_without_data_uses_random_inputs_and_says_so(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_model(), str(path))
    report = bench([path, path], threads=(1,), runs=2, warmup=0)
    assert any("random inputs" in n for n in report.notes)
    assert report.rows[1].name == "conv.onnx#2"
    assert report.rows[1].agreement["max_abs"] == 0.0
    assert report.rows[0].agreement["top1"] is None  # a conv feature vector is not a distribution


def test_bench_accepts_artifact_folders_and_models(tmp_path, x_batch):
    model = presso.load(conv_model())
    folder = presso.compile(model, "cpu-x86").save(tmp_path / "build")
    report = bench([model, folder], [{"x": x_batch}], threads=(1,), runs=2, warmup=0)
    assert report.rows[1].name == "build"
    assert report.rows[1].agreement["max_abs"] < 1e-5


def test_bench_errors(tmp_path, softmax_pair):
    a, _, data, _ = softmax_pair
    with pytest.raises(PressoError, match="at least one model"):
        bench([])
    with pytest.raises(PressoError, match="thread"):
        bench([a], data, threads=(0,), runs=1)
    conv = tmp_path / "conv.onnx"
    onnx.save(conv_model(), str(conv))
    with pytest.raises(PressoError):  # a model that cannot take the baseline's inputs
        bench([a, conv], data, threads=(1,), runs=1)
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 16), np.float32))
    with pytest.raises(PressoError, match="no samples"):
        bench([a], empty, threads=(1,), runs=1)
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((2, 16), np.nan, np.float32))
    with pytest.raises(presso.CalibrationError, match="NaN"):
        bench([a], nan, threads=(1,), runs=1)


def test_agreement_edge_cases():
    softmax = np.exp(np.arange(6.0)).reshape(2, 3)
    softmax /= softmax.sum(-1, keepdims=True)
    result = agreement([{"p": softmax}], [{"q": softmax[:, ::-1]}])  # matched by position
    assert result["top1"] == 0.0 and result["max_abs"] > 0
    with pytest.raises(PressoError, match="output 'p' changed shape"):
        agreement([{"p": softmax}], [{"p": softmax[:1]}])
    with pytest.raises(PressoError, match="different outputs"):
        agreement([{"p": softmax}], [{"q": softmax, "r": softmax}])
    # the same numbers as verification's, over every output of every sample
    rng = np.random.default_rng(0)
    ref = [{"p": softmax, "f": rng.standard_normal(5)}, {"p": softmax[::-1], "f": rng.standard_normal(5)}]
    cand = [{k: v + 0.01 * rng.standard_normal(v.shape) for k, v in r.items()} for r in ref]
    error = compare_outputs(ref, cand)
    assert agreement(ref, cand) == {"max_abs": error.max_abs, "cosine": error.cosine, "top1": 1.0}
