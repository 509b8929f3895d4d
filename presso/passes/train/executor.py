"""`GraphExecutor`: run a Presso `Model` with torch, differentiably w.r.t. its initializers.

The executor interprets the IR's graph node by node with the torch functions of
:mod:`.ops`. Float initializers chosen as trainable become ``torch.nn.Parameter``s; all other
constants are buffers. After training, :meth:`GraphExecutor.write_back` copies the values into
the model's initializers, so the IR stays the single source of truth and every pass before
and after keeps working. The graph itself is never changed.

Needs: static control flow (no If/Loop/Scan) and ops from :data:`.ops.OPS`; anything else is
an :class:`~presso.ir.errors.UnsupportedOpError` naming the node, raised when the executor is
built. Dynamic shapes are fine: shapes are computed from the actual tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs
import torch

from ...ir import Model
from ...ir.analysis.graphview import topological_nodes
from ...ir.edit import set_constant
from ...ir.errors import PressoError, UnsupportedOpError
from .ops import OPS, QUANT_RANGES, OpEnv, grad_scale, quant_type_of, to_torch

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# (op, input index) slots whose constants are never trained: statistics, quantization
# parameters, shapes, bounds. Shape-like inputs are integers anyway.
FROZEN_SLOTS = {
    "BatchNormalization": {3, 4}, "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
    "Resize": {1, 2, 3}, "Upsample": {1}, "Clip": {1, 2}, "Pad": {1, 2, 3}, "Pow": {1},
    "Where": {0}, "Range": {0, 1, 2},
}
# Slots that hold learnable parameters even when they are scalars.
WEIGHT_SLOTS = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {1, 2}, "MatMul": {0, 1},
    "BatchNormalization": {1, 2}, "LayerNormalization": {1, 2}, "InstanceNormalization": {1, 2},
    "PRelu": {1},
}


def default_trainable(model: Model) -> set[str]:
    """Names of the float initializers that training updates by default.

    Weights and biases of linear and normalization ops, and non-scalar float constants of
    element-wise ops (e.g. a batch norm lowered to Mul/Add, or a bias added after MatMul).
    Never trained: batch-norm statistics, Q/DQ scales and zero points (QAT adds the scales
    itself), bounds, shapes, and float scalars outside weight slots (epsilons, 1/6 of HardSwish).
    """
    frozen: set[str] = set()
    candidates: set[str] = set()
    for node in model.graph.nodes:
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant) or tensor.values is None or not tensor.name:
                continue
            if np.dtype(tensor.dtype).kind != "f":
                continue
            if index in FROZEN_SLOTS.get(node.op, ()):
                frozen.add(tensor.name)
            elif index in WEIGHT_SLOTS.get(node.op, ()) or int(np.prod(tensor.shape)) > 1:
                candidates.add(tensor.name)
            else:
                frozen.add(tensor.name)
    return candidates - frozen


class GraphExecutor(torch.nn.Module):
    """A torch module that computes a Presso model's graph.

    ``trainable``: initializer names that become parameters (default
    :func:`default_trainable`). ``float_dtype``: the dtype of every float tensor (float64 for
    gradient checks). ``learn_scales``: make QuantizeLinear scales parameters too, with the
    LSQ gradient scale; the scale of a DequantizeLinear that reads that QuantizeLinear's
    output with equal values is tied to it, so that the pair stays one fake-quantizer.
    """

    def __init__(self, model: Model, *, trainable: Iterable[str] | None = None,
                 float_dtype: torch.dtype = torch.float32, learn_scales: bool = False,
                 freeze: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.env = OpEnv(opset=model.opset, float_dtype=float_dtype)
        self.nodes = topological_nodes(model)
        self._check_supported()
        names = set(default_trainable(model) if trainable is None else trainable)
        self.aliases = self._tie_qdq_scales()
        self.scale_names: set[str] = set()
        if learn_scales:
            for node in self.nodes:
                if node.op == "QuantizeLinear" and isinstance(node.inputs[1], gs.Constant):
                    self.scale_names.add(node.inputs[1].name)
                    self.env.lsq_nodes.add(node.name)
            names |= self.scale_names
        if freeze:
            patterns = [re.compile(p) for p in freeze]
            names = {n for n in names if not any(p.search(n) for p in patterns)}
        self.constants: dict[str, gs.Constant] = {}
        self._keys: dict[str, str] = {}  # tensor name -> parameter/buffer key
        self.params = torch.nn.ParameterDict()
        for node in self.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant) and t.name and t.values is not None and t.name not in self._keys:
                    self._add_constant(t, trainable=t.name in names)
        self._plans: dict[tuple[str, ...], list[int]] = {}
        self.masks: dict[str, torch.Tensor] = {}

    # ---- construction -----------------------------------------------------------------
    def _check_supported(self) -> None:
        for node in self.nodes:
            if node.domain not in (None, "", "ai.onnx") or node.op not in OPS:
                known = ", ".join(sorted(OPS)[:12]) + ", ..."
                raise UnsupportedOpError(
                    f"the training executor has no implementation of "
                    f"{(node.domain + '.') if node.domain else ''}{node.op}",
                    where=f"node '{node.name}' ({node.op})",
                    hint=f"supported ops include {known}; simplify the graph first "
                         "(constants-to-initializers, fold-constants) or exclude it from training")
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                raise UnsupportedOpError("the training executor does not run subgraphs (control flow)",
                                         where=f"node '{node.name}' ({node.op})")

    def _add_constant(self, tensor: gs.Constant, *, trainable: bool) -> None:
        key = f"t{len(self._keys)}"
        self._keys[tensor.name] = key
        self.constants[tensor.name] = tensor
        # a copy: training must not change the model's arrays before write_back (nor on failure)
        value = to_torch(np.asarray(tensor.values), self.env).clone()
        if trainable and value.is_floating_point():
            self.params[key] = torch.nn.Parameter(value)
        else:
            self.register_buffer(key, value, persistent=False)

    def _tie_qdq_scales(self) -> dict[str, str]:
        """DQ scale/zero-point names that read the same values as their Q's: alias them."""
        aliases = {}
        for node in self.nodes:
            if node.op != "DequantizeLinear" or not node.inputs[0].inputs:
                continue
            q = node.inputs[0].inputs[0]
            if q.op != "QuantizeLinear":
                continue
            for slot in (1, 2):
                if slot >= len(node.inputs) or slot >= len(q.inputs):
                    continue
                mine, theirs = node.inputs[slot], q.inputs[slot]
                if (isinstance(mine, gs.Constant) and isinstance(theirs, gs.Constant) and mine is not theirs
                        and mine.name and theirs.name and np.array_equal(mine.values, theirs.values)):
                    aliases[mine.name] = theirs.name
        return aliases

    # ---- access -------------------------------------------------------------------------
    def constant(self, name: str) -> torch.Tensor:
        key = self._keys[self.aliases.get(name, name)]
        return self.params[key] if key in self.params else getattr(self, key)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters by initializer name."""
        return {name: self.params[key] for name, key in self._keys.items() if key in self.params}

    def set_masks(self, masks: Mapping[str, np.ndarray]) -> None:
        """Entries that are False stay zero through training (sparsity kept)."""
        for name, mask in masks.items():
            if name in self._keys:
                self.masks[name] = torch.as_tensor(np.asarray(mask, dtype=bool))
        self.apply_constraints()

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Re-impose masks and keep learned scales positive; call after each optimizer step."""
        params = self.trainable()
        for name, mask in self.masks.items():
            if name in params:
                params[name].mul_(mask.to(params[name].dtype))
        for name in self.scale_names:
            if name in params:
                params[name].clamp_(min=torch.finfo(params[name].dtype).tiny * 1e6)

    # ---- execution --------------------------------------------------------------------
    def _plan(self, outputs: tuple[str, ...]) -> list[int]:
        """Indices (in topological order) of the nodes needed for ``outputs``."""
        if outputs in self._plans:
            return self._plans[outputs]
        needed = set(outputs)
        chosen = []
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            if any(t.name in needed for t in node.outputs):
                chosen.append(i)
                needed.update(t.name for t in node.inputs if t.name)
        plan = sorted(chosen)
        self._plans[outputs] = plan
        return plan

    def forward(self, feeds: Mapping[str, torch.Tensor | np.ndarray],
                outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Compute ``outputs`` (graph outputs by default; any tensor name works) from ``feeds``."""
        wanted = tuple(outputs) if outputs is not None else tuple(self.model.output_names())
        values: dict[str, torch.Tensor] = {}
        for name, value in feeds.items():
            values[name] = value if isinstance(value, torch.Tensor) else to_torch(np.asarray(value), self.env)
            if values[name].is_floating_point():
                values[name] = values[name].to(self.env.float_dtype)
        plan = self._plan(wanted)
        last_use = {}
        for step, i in enumerate(plan):
            for t in self.nodes[i].inputs:
                last_use[t.name] = step
        keep = set(wanted)
        for step, i in enumerate(plan):
            node = self.nodes[i]
            if node.name in self.env.lsq_nodes:
                self._lsq_scale(node, values)
            inputs = [self._value(t, values, node) for t in node.inputs]
            try:
                results = OPS[node.op](node, inputs, self.env)
            except PressoError:
                raise
            except Exception as exc:
                raise UnsupportedOpError(
                    f"the training executor failed on {node.op}: {type(exc).__name__}: {exc}",
                    where=f"node '{node.name}' ({node.op})",
                    hint="check the input shapes; fold shape computations with fixed input shapes first") from exc
            for tensor, result in zip(node.outputs, results):
                if tensor.name and result is not None:
                    values[tensor.name] = result
            for t in node.inputs:  # free intermediates as soon as nothing else reads them
                if last_use.get(t.name) == step and t.name not in keep and t.name in values:
                    del values[t.name]
        missing = [n for n in wanted if n not in values and n not in self._keys]
        if missing:
            raise PressoError(f"the executor cannot compute tensor(s) {missing[:5]}",
                              hint="name graph inputs, outputs or intermediate tensors of the model")
        return {n: values[n] if n in values else self.constant(n) for n in wanted}

    def _lsq_scale(self, node: gs.Node, values: dict[str, torch.Tensor]) -> None:
        """Scale the gradient of a learned step size by 1/√(N·qmax) (Esser et al., LSQ).

        N is the number of elements per scale value (per sample for activations). The scaled
        tensor goes into this forward pass's values under the scale's name, so that the
        DequantizeLinear reading the same scale uses it too and the whole gradient is scaled.
        """
        name = node.inputs[1].name
        scale = self.constant(name)
        if not scale.requires_grad or name in values:
            return
        x = node.inputs[0]
        numel = int(np.prod(x.shape)) if isinstance(x, gs.Constant) else (
            values[x.name][0].numel() if x.name in values and values[x.name].dim() > 0 else 1)
        qmax = QUANT_RANGES.get(quant_type_of(node), (0, 255))[1]
        per_scale = max(numel // max(scale.numel(), 1), 1)
        scaled = grad_scale(scale, 1.0 / float(np.sqrt(per_scale * max(qmax, 1))))
        values[name] = scaled
        for alias, source in self.aliases.items():
            if source == name:
                values[alias] = scaled

    def _value(self, tensor: gs.Tensor, values: dict[str, torch.Tensor], node: gs.Node):
        if not tensor.name:
            return None  # omitted optional input
        if tensor.name in values:
            return values[tensor.name]
        if tensor.name in self._keys:
            return self.constant(tensor.name)
        raise PressoError(f"input '{tensor.name}' of node '{node.name}' has no value",
                          where=f"node '{node.name}' ({node.op})",
                          hint="feed every graph input by name")

    # ---- results back into the IR -------------------------------------------------------
    @torch.no_grad()
    def write_back(self) -> list[str]:
        """Copy trained values into the model's initializers (keeping their dtypes).

        Tied DequantizeLinear scales receive their QuantizeLinear's value. Returns the names
        of the initializers written.
        """
        written = []
        params = self.trainable()
        for name, param in params.items():
            tensor = self.constants[name]
            set_constant(tensor, param.detach().cpu().numpy().astype(np.dtype(tensor.dtype)))
            written.append(name)
        tensors = self.model.tensors() if self.aliases else {}  # one graph scan, not one per alias
        for alias, source in self.aliases.items():
            if source in params:
                target = tensors.get(alias)
                if isinstance(target, gs.Constant):
                    set_constant(target, np.asarray(self.constants[source].values).astype(np.dtype(target.dtype)))
                    written.append(alias)
        return written


def run_numpy(model: Model, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
              **kwargs) -> dict[str, np.ndarray]:
    """Convenience for tests and tools: one forward pass, results as numpy arrays."""
    executor = GraphExecutor(model, trainable=(), **kwargs)
    with torch.no_grad():
        result = executor(feeds, outputs)
    return {k: v.detach().cpu().numpy() for k, v in result.items()}

