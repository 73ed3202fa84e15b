"""ONNX programs (.onnx). torch's ONNX converter cannot decompose `scan`, so a recurrent model's time loop
is built here: one step converted by torch, wrapped as the body of an ONNX Scan over the time axis."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from ..core.errors import ExportError
from ..models.protocol import Program

Tensor = torch.Tensor

OPSET = 18  # OptionalHasElement on a tensor (the optional h0) needs 18


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("export: writing .onnx needs the onnx package, which is not installed; run "
                          "pip install 'innergrad[export]' (or export to .pt2, which needs nothing more)") from None
    return onnx


def convert(module: nn.Module, args: tuple[Tensor, ...], inputs: list[str], outputs: list[str], batch_axes: dict):
    """`module` as an ONNX model, the axes in `batch_axes` (`{name: {axis: label}}`) left dynamic."""
    onnx = _onnx()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript converter (dynamo=False) needs only onnx; it warns that it is deprecated.
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, buf, dynamo=False,  # type: ignore[arg-type]  # takes a file object
                              input_names=inputs, output_names=outputs, dynamic_axes=batch_axes,
                              opset_version=OPSET)
    except Exception as e:  # the converter raises many types; all mean "cannot convert this module"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"export: torch's ONNX converter cannot convert {type(module).__name__}: "
                          f"{first[:300]}; try the .pt2 format") from e
    return onnx.load_from_string(buf.getvalue())


def onnx_bytes(program: Program) -> bytes:
    """The `.onnx` file of the program: torch's converter for a feed-forward one, a Scan for a recurrent one."""
    if program.recurrent:
        return scan_model(program).SerializeToString()
    names = list(program.inputs) + list(program.outputs)
    return convert(program.module, program.example, list(program.inputs), list(program.outputs),
                   {n: {0: "batch"} for n in names}).SerializeToString()


def scan_model(program: Program):
    """`(x, h0) -> (y, h_last)`: a Scan over time whose body is the program's step.

    `h0` is an optional input: left out, the initial state is the model's (zeros, or the learned
    `h0`) broadcast to the batch.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    (x,) = program.example
    dtype = x.dtype
    h0 = program.state0()
    H = h0.shape[-1]
    input_size = x.shape[-1]
    t_axis, b_axis = program.axes()
    batch_first = t_axis == 1
    elem = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE}.get(dtype)
    if elem is None:
        raise ExportError(f"export: ONNX export takes float32 or float64 models, got {dtype}; convert the model "
                          "with .float() first")
    ex = (torch.zeros(2, H, dtype=dtype), torch.zeros(2, input_size, dtype=dtype))
    step = convert(program.module, ex, ["h", "x_t"], ["h_next", "y_t"],
                   {n: {0: "batch"} for n in ("h", "x_t", "h_next", "y_t")})
    body = step.graph
    # The body reads the weights from the outer graph: one copy of them, shared by every iteration.
    weights = list(body.initializer)
    del body.initializer[:]
    body.name = "gradrnn_step"
    x_dims: list[str | int] = ["batch", "T", input_size] if batch_first else ["T", "batch", input_size]
    y_dims: list[str | int] = ["batch", "T"] if batch_first else ["T", "batch"]
    h_dims: list[str | int] = ["batch", H]
    h_type = helper.make_tensor_type_proto(elem, h_dims)
    given = helper.make_graph([helper.make_node("OptionalGetElement", ["h0"], ["h0_given"])], "h0_given", [],
                              [helper.make_tensor_value_info("h0_given", elem, h_dims)])
    default = helper.make_graph([helper.make_node("Expand", ["h0_default", "h0_shape"], ["h0_expanded"])],
                                "h0_default", [], [helper.make_tensor_value_info("h0_expanded", elem, h_dims)])
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "batch_axis"], ["batch_size"]),
        helper.make_node("Concat", ["batch_size", "hidden_size"], ["h0_shape"], axis=0),
        helper.make_node("OptionalHasElement", ["h0"], ["h0_is_given"]),
        helper.make_node("If", ["h0_is_given"], ["h_init"], then_branch=given, else_branch=default),
        helper.make_node("Scan", ["h_init", "x"], ["h_last", "y"], body=body, num_scan_inputs=1,
                         scan_input_axes=[t_axis], scan_output_axes=[t_axis]),
    ]
    consts = [
        numpy_helper.from_array(h0.detach().reshape(1, H).cpu().numpy(), "h0_default"),
        numpy_helper.from_array(torch.tensor([b_axis], dtype=torch.int64).numpy(), "batch_axis"),
        numpy_helper.from_array(torch.tensor([H], dtype=torch.int64).numpy(), "hidden_size"),
    ]
    graph = helper.make_graph(
        nodes, "innergrad_gradrnn",
        inputs=[helper.make_tensor_value_info("x", elem, x_dims),
                helper.make_value_info("h0", helper.make_optional_type_proto(h_type))],
        outputs=[helper.make_tensor_value_info("y", elem, y_dims),
                 helper.make_tensor_value_info("h_last", elem, h_dims)],
        initializer=consts + weights,
    )
    for v in [*body.input, *body.output]:
        if v.type.tensor_type.shape.dim[0].dim_param != "batch":
            raise ExportError(f"export: the ONNX step's {v.name} has a fixed batch size; please report this")
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name="innergrad")
    model.ir_version = step.ir_version
    onnx.checker.check_model(model)
    return model


