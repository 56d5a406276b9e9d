"""Graph surgery shared by the integer rewrites: find each quantized Linear's MatMul, emit nodes, prune.

The dynamo exporter names initializers after parameters, but its optimizer folds the
``Transpose`` of a Linear's weight into a new, anonymously named initializer. So each
quantized Linear is found by *value*: the MatMul whose constant second input (itself, or
through a ``Transpose``) equals the dequantized weight the float export was given, bit for
bit. A quantized Linear that is not found, or found twice, is an error: a graph that silently
kept a float layer would misreport what it runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["GraphBuilder", "WeightMatMul", "drop_unused", "find_weight_matmuls", "replace_nodes",
           "replace_weight_matmuls", "require_domain"]


@dataclass(frozen=True)
class WeightMatMul:
    """A ``MatMul`` node multiplying by a constant weight (``transposed``: through ``Transpose``)."""

    node: object  # onnx.NodeProto
    initializer: str
    transposed: bool


def _weight_of(node, initializers, producers) -> tuple[str, bool] | None:
    b = node.input[1]
    if b in initializers:
        return b, False
    source = producers.get(b)
    if source is not None and source.op_type == "Transpose" and source.input[0] in initializers:
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        if perm == [1, 0]:
            return source.input[0], True
    return None


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def find_weight_matmuls(graph, dequantized: Mapping[str, np.ndarray]) -> tuple[dict[str, WeightMatMul], list[str]]:
    """``({module name: its MatMul}, [initializers of the other weight MatMuls])``.

    ``dequantized``: each quantized Linear's float ``[out, in]`` weight as the export holds it.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    wanted: dict[tuple, list[str]] = {}  # key: the [in, out] matrix the MatMul multiplies by
    for name, weight in dequantized.items():
        matrix = np.ascontiguousarray(weight.T)
        wanted.setdefault((matrix.shape, _digest(matrix)), []).append(name)
    found: dict[str, list[WeightMatMul]] = {}
    others: list[str] = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = _weight_of(node, initializers, producers)
        if weight is None:
            continue
        array = numpy_helper.to_array(initializers[weight[0]])
        matrix = array.T if weight[1] else array
        names = wanted.get((matrix.shape, _digest(matrix)), [])
        if not names:
            others.append(weight[0])
        for name in names:
            found.setdefault(name, []).append(WeightMatMul(node, *weight))
    missing = sorted(set(dequantized) - set(found))
    if missing:
        raise RuntimeError(f"{len(missing)} quantized Linear layers were not found in the exported graph "
                           f"(e.g. {missing[:3]}): no MatMul multiplies by their weights; the integer rewrite "
                           "cannot place them (export with --dequantize for a float graph)")
    twice = {name: len(uses) for name, uses in found.items() if len(uses) != 1}
    if twice:
        raise RuntimeError(f"quantized Linear weights appear in more than one MatMul ({twice}); the integer rewrite "
                           "cannot tell which layer each is (export with --dequantize for a float graph)")
    return {name: uses[0] for name, uses in found.items()}, others


class GraphBuilder:
    """Emits nodes and initializers into ``graph`` under names that cannot clash with the exporter's."""

    def __init__(self, graph, prefix: str):
        self.graph = graph
        self.prefix = prefix
        self.count = 0
        self.taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer}

    def name(self, hint: str) -> str:
        while True:
            self.count += 1
            candidate = f"{self.prefix}/{hint}_{self.count}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def constant(self, hint: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, nodes: list, op: str, inputs: list[str], hint: str, *, output: str | None = None,
             domain: str = "", **attrs) -> str:
        """Append ``op(inputs)`` to ``nodes``; return its output's name (``output`` if given)."""
        from onnx import helper

        out = output or self.name(hint)
        nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), domain=domain, **attrs))
        return out


def replace_nodes(graph, emit) -> None:
    """Rebuild ``graph.node`` in order: ``emit(node, new_nodes)`` appends the node itself or its replacement."""
    new_nodes: list = []
    for node in graph.node:
        emit(node, new_nodes)
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused(graph)


def replace_weight_matmuls(graph, placed: Mapping[str, WeightMatMul], rewrite) -> dict[str, str]:
    """Replace each MatMul of ``placed`` (module name -> its MatMul) by what ``rewrite(name, node,
    new_nodes)`` appends; every other node stays as it is. Returns module name -> replaced node's name."""
    by_node = {id(found.node): name for name, found in placed.items()}
    replaced: dict[str, str] = {}

    def emit(node, new_nodes: list) -> None:
        name = by_node.get(id(node))
        if name is None:
            new_nodes.append(node)
            return
        rewrite(name, node, new_nodes)
        replaced[name] = node.name

    replace_nodes(graph, emit)
    return dict(sorted(replaced.items()))


def require_domain(model, domain: str, version: int = 1) -> None:
    """Declare the operator set ``domain`` (e.g. com.microsoft) in ``model`` if it is not declared yet."""
    from onnx import helper

    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def drop_unused(graph) -> None:
    """Remove nodes whose outputs nothing reads (transitively), then unread initializers and value_info."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | outputs
    initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {o for n in graph.node for o in n.output}
    value_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
