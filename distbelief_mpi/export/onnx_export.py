"""--format onnx: one ONNX graph (opset 17): input "x" (n, *input_shape) float32 in raw units,
output "probabilities" (n, n_classes). Every built-in layer is expressed with exact ONNX ops:

  scale      x * x_scale
  dense      Flatten, MatMul W (D, U), Add b, activation
  local      Gather of each position's window from the flattened map (indices (P, K), K ordered
             (c, i, j): the unfold), Transpose to (P, n, K), MatMul W (P, K, F), Add b (P, 1, F),
             activation, Transpose and Reshape to (n, F, OH, OW)
  maxpool    MaxPool
  l2pool     sqrt(AveragePool(x * x) * size^2 + 1e-6)
  lcn        the cropped-window mean over channels: ReduceMean over C, then AveragePool padded
             by size // 2 without the padding in its count (kernels/lcn.py's N)
  output     dense without activation, then Softmax

Plugin layer types are refused by name (common.refuse_layers)."""

from pathlib import Path

import numpy as np

from .common import BUILTIN_TYPES
from .files import atomic_file

OPSET, IR_VERSION = 17, 8  # IR 8 is opset 17's: what older runtimes accept
ONNX_TYPES = BUILTIN_TYPES
LCN_EPS, L2POOL_EPS = 1e-4, 1e-6  # kernels/lcn.py, kernels/pooling.py
ACTIVATION_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "none": None}


class GraphBuilder:
    """Nodes and initializers appended in order; each method returns its output's name."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def activation(self, h: str, kind: str) -> str:
        op = ACTIVATION_OPS[kind]
        return self.op(op, h) if op else h


def dense(g: GraphBuilder, h: str, layer, index: int, params: dict) -> str:
    flat = g.op("Flatten", h, axis=1)
    z = g.op("MatMul", flat, g.const(f"layers.{index}.W", params[f"layers.{index}.W"]))
    return g.activation(g.op("Add", z, g.const(f"layers.{index}.b", params[f"layers.{index}.b"])), layer.activation)


def local_indices(layer) -> np.ndarray:
    """(P, K) int64: for output position p = (r, c) and k = (ch, i, j), the flat input index
    ch * H * W + (r * stride + i) * W + (c * stride + j)."""
    ch, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    rows = (np.arange(oh) * layer.stride)[:, None, None, None, None] + np.arange(layer.patch)[None, None, None, :, None]
    cols = (np.arange(ow) * layer.stride)[None, :, None, None, None] + np.arange(layer.patch)[None, None, None, None, :]
    index = np.arange(ch)[None, None, :, None, None] * (h * w) + rows * w + cols  # (OH, OW, C, p, p)
    return index.reshape(oh * ow, ch * layer.patch**2).astype(np.int64)


def local(g: GraphBuilder, h: str, layer, index: int, params: dict) -> str:
    f, oh, ow = layer.out_shape
    flat = g.op("Reshape", h, g.const(f"layers.{index}.flat_shape", np.array([0, -1], np.int64)))
    cols = g.op("Gather", flat, g.const(f"layers.{index}.windows", local_indices(layer)), axis=1)  # (n, P, K)
    by_position = g.op("Transpose", cols, perm=[1, 0, 2])  # (P, n, K)
    z = g.op("MatMul", by_position, g.const(f"layers.{index}.W", params[f"layers.{index}.W"]))  # (P, n, F)
    bias = params[f"layers.{index}.b"][:, None, :]  # (P, 1, F)
    y = g.activation(g.op("Add", z, g.const(f"layers.{index}.b", bias)), layer.activation)
    y = g.op("Transpose", y, perm=[1, 2, 0])  # (n, F, P)
    return g.op("Reshape", y, g.const(f"layers.{index}.out_shape", np.array([0, f, oh, ow], np.int64)))


def maxpool(g: GraphBuilder, h: str, layer, index: int, params: dict) -> str:
    return g.op("MaxPool", h, kernel_shape=[layer.size] * 2, strides=[layer.stride] * 2)


def l2pool(g: GraphBuilder, h: str, layer, index: int, params: dict) -> str:
    mean = g.op("AveragePool", g.op("Mul", h, h), kernel_shape=[layer.size] * 2, strides=[layer.stride] * 2)
    sums = g.op("Mul", mean, g.const(f"layers.{index}.window", np.array(layer.size**2, np.float32)))
    return g.op("Sqrt", g.op("Add", sums, g.const(f"layers.{index}.eps", np.array(L2POOL_EPS, np.float32))))


def lcn(g: GraphBuilder, h: str, layer, index: int, params: dict) -> str:
    def window_mean(planes: str) -> str:  # (n, C, H, W) -> (n, 1, H, W)
        mean = g.op("ReduceMean", planes, axes=[1], keepdims=1)
        r = layer.size // 2
        return g.op(
            "AveragePool", mean, kernel_shape=[layer.size] * 2, strides=[1, 1], pads=[r] * 4, count_include_pad=0
        )

    v = g.op("Sub", h, window_mean(h))
    variance = window_mean(g.op("Mul", v, v))
    eps = g.const(f"layers.{index}.eps", np.array(LCN_EPS, np.float32))
    return g.op("Div", v, g.op("Sqrt", g.op("Add", variance, eps)))


def output(g: GraphBuilder, h: str, layer, index: int, params: dict) -> str:
    return g.op("Softmax", dense(g, h, layer, index, params), axis=1)


BUILDERS = {"dense": dense, "local": local, "maxpool": maxpool, "l2pool": l2pool, "lcn": lcn, "output": output}


def build_onnx(model, config_text: str):
    """The onnx.ModelProto of `model` (checked by onnx.checker); config_text in its metadata."""
    import onnx
    from onnx import TensorProto, helper

    g = GraphBuilder()
    params = model.params()
    h = g.op("Mul", "x", g.const("x_scale", np.array(model.x_scale, np.float32)))
    for index, layer in enumerate(model.network.layers):
        h = BUILDERS[layer.kind](g, h, layer, index, params)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *model.input_shape])
    y = helper.make_tensor_value_info(h, TensorProto.FLOAT, ["n", model.n_classes])
    graph = helper.make_graph(g.nodes, "distbelief_model", [x], [y], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    proto.producer_name = "distbelief-mpi"
    helper.set_model_props(proto, {"distbelief_config": config_text})
    _rename_output(proto, h, "probabilities")
    onnx.checker.check_model(proto)
    return proto


def _rename_output(proto, old: str, new: str) -> None:
    proto.graph.node[-1].output[0] = new
    proto.graph.output[0].name = new


def write_onnx(model, config_text: str, path: Path) -> None:
    proto = build_onnx(model, config_text)
    with atomic_file(path) as handle:
        handle.write(proto.SerializeToString())
