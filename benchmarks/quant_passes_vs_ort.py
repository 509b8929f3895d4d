"""Presso's quantization passes vs onnxruntime.quantization.quantize_static, same data.

Usage: python benchmarks/quant_passes_vs_ort.py magika|cls
Prints, per calibration method, top-1 agreement with the float model (evaluated with
onnxruntime's "basic" optimizations = fake-quant arithmetic, and "all" = fused int8 kernels),
quantization wall time and file size relative to the float model, for Presso and for ORT
(QDQ, per-channel int8 weights, uint8 activations). Both get the same prepared float model
(ORT's own pre-processing crashes on PP-OCR cls) and the same 64 calibration samples.
"""
import time, sys, os, tempfile
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType, CalibrationMethod
import presso
from presso.ir import load, save, create_session
from presso.passes import PassManager
from presso.tools import zoo
which = sys.argv[1]
if which == "magika":
    feats, _ = zoo.magika_dataset(400); name = "bytes"; calib, ev = feats[:64], feats; path = zoo.magika_model()
else:
    x, _ = zoo.ppocr_cls_inputs(64); xe, _ = zoo.ppocr_cls_inputs(200, seed=1000); name = "x"; calib, ev = x, xe
    path = zoo.ppocr_cls_model()
base = load(path)
d = tempfile.mkdtemp()
# ORT needs the prepared float model for cls (its own pre-processing crashes); same for both
prep = base.copy(); PassManager.parse("constants-to-initializers,fold-constants,fold-batchnorm,upgrade-opset{version=13}").run(prep)
fp = os.path.join(d, "f.onnx"); save(prep, fp)
def run(p, opt): 
    s = create_session(p, optimization=opt); return s.run(None, {name: ev})[0]
ref = run(fp, "basic").argmax(1)
for method in ["auto", "minmax", "entropy", "percentile"]:
    t = time.time(); q, rep = presso.quantize(base, {name: calib}, method=method, progress=False, report=True); tp = time.time() - t
    qp = os.path.join(d, f"p_{method}.onnx"); save(q, qp)
    pa = [(run(qp, o).argmax(1) == ref).mean() for o in ("basic", "all")]
    if method == "auto":  # onnxruntime has no counterpart: the row says which candidate won
        print(f"{which} auto→{rep.records[1].result.stats['chosen']:18s} presso agree basic/all {pa[0]:.3f}/{pa[1]:.3f} "
              f"{tp:5.1f}s {os.path.getsize(qp)/os.path.getsize(path):.3f}x", flush=True)
        continue
    class R(CalibrationDataReader):
        def __init__(s): s.it = iter([{name: calib[i:i+16]} for i in range(0, len(calib), 16)])
        def get_next(s): return next(s.it, None)
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]
    op = os.path.join(d, f"o_{method}.onnx"); t = time.time()
    quantize_static(fp, op, R(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm)
    to = time.time() - t
    oa = [(run(op, o).argmax(1) == ref).mean() for o in ("basic", "all")]
    print(f"{which} {method:10s} presso agree basic/all {pa[0]:.3f}/{pa[1]:.3f} {tp:5.1f}s {os.path.getsize(qp)/os.path.getsize(path):.3f}x | ort {oa[0]:.3f}/{oa[1]:.3f} {to:5.1f}s {os.path.getsize(op)/os.path.getsize(path):.3f}x", flush=True)
