"""Running only the part of a model after a layer, from that layer's output (torch.fx).

Perturbation methods change a layer's output many times; the part of the network
before the layer does not change, so it should run once. ``TracedModel`` traces the
model with ``torch.fx`` (the target layers kept as opaque leaves), runs it once while
recording every value that the part after a layer still needs (the layer's output and,
for example, a residual branch that spans it), and then re-runs only that part on new
layer outputs. Tracing does not modify the model. Models that cannot be traced
(data-dependent control flow, for example) raise ``TailUnavailable``, and the caller
falls back to full forward passes.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.fx
from torch import nn


class TailUnavailable(Exception):
    """The part of the model after a layer cannot be run on its own."""


#: torch.fx tracing swaps ``nn.Module.__call__`` / ``__getattr__`` for its own wrappers
#: while it runs, and restores what it saw at the start: two traces at once could leave a
#: wrapper in place for good. The package's traces take turns.
_TRACE_LOCK = threading.Lock()


class _TargetLeafTracer(torch.fx.Tracer):
    """Keeps the target layers as opaque calls, and is invisible to other threads.

    While a trace runs, every thread's module calls and parameter look-ups go through
    torch.fx's wrappers; this tracer hands those of other threads straight to the module
    (``call_module``) or the attribute (``getattr``), so that a forward pass of any model
    elsewhere runs as usual. No function is auto-wrapped (``autowrap_modules=()``): that
    would rewrite other modules' globals.
    """

    def __init__(self, leaves: Sequence[nn.Module]) -> None:
        # torch's annotation asks for at least one module; an empty tuple is accepted.
        super().__init__(autowrap_modules=(), autowrap_functions=())  # type: ignore[arg-type]
        self._leaf_ids = {id(leaf) for leaf in leaves}
        self._tracing_thread: int | None = None

    def trace(self, root: Any, concrete_args: Any = None) -> torch.fx.Graph:
        self._tracing_thread = threading.get_ident()
        try:
            return super().trace(root, concrete_args)
        finally:
            self._tracing_thread = None

    def _elsewhere(self) -> bool:
        return threading.get_ident() != self._tracing_thread

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._elsewhere():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._elsewhere():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return id(module) in self._leaf_ids or super().is_leaf_module(module, qualified_name)


class _Root(nn.Module):
    """What is traced: the user's model as a child. The tracer stores constants it meets
    (tensors that are no attribute of any module) on the traced root; this keeps them off
    the user's model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_tensor: torch.Tensor) -> Any:
        return self.model(input_tensor)


class TracedModel:
    """``model`` as an fx graph in which each of ``layers`` is called exactly once.

    The graph is run by an interpreter, node by node: no ``GraphModule`` is built, so no
    Python source is generated and registered in ``linecache`` (which keeps every entry
    for the life of the process).
    """

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        root = _Root(model)
        tracer = _TargetLeafTracer(layers)
        try:
            with _TRACE_LOCK:
                graph = tracer.trace(root)
        except Exception as error:  # any tracing failure means: no tail for this model
            raise TailUnavailable(f"torch.fx cannot trace the model: {error}") from error
        self.nodes = list(graph.nodes)
        self.layer_nodes = [self._node_calling(root, layer) for layer in layers]
        order = {node: position for position, node in enumerate(self.nodes)}
        self._prefix_lengths = [order[node] for node in self.layer_nodes]
        self._tail_inputs = [self._live_before(order, node) for node in self.layer_nodes]
        self._batch_dependent = _descendants_of_inputs(self.nodes)
        # Built once: an Interpreter walks every submodule when it is constructed.
        self._interpreter = _ForgetfulInterpreter(root, graph=graph)
        self._recorder = _RecordingInterpreter(root, graph=graph)

    def _node_calling(self, root: nn.Module, layer: nn.Module) -> torch.fx.Node:
        name = next(name for name, module in root.named_modules() if module is layer)
        calls = [n for n in self.nodes if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            layer_name = name.removeprefix("model.")
            raise TailUnavailable(
                f"layer {layer_name!r} is called {len(calls)} times in the forward"
            )
        return calls[0]

    def _live_before(self, order: dict, layer_node: torch.fx.Node) -> list[torch.fx.Node]:
        """Nodes computed before ``layer_node`` whose values the rest still uses."""
        position = order[layer_node]
        return [
            node
            for node in self.nodes[:position]
            if any(order[user] > position for user in node.users)
        ]

    def run_and_record(self, input_tensor: torch.Tensor) -> tuple[Any, TailValues]:
        """Run the whole model, keeping what each layer's tail needs. Returns the output and
        the recorded values (the caller keeps them for the call, and drops them after)."""
        needed = {node for inputs in self._tail_inputs for node in inputs}
        needed.update(self.layer_nodes)
        output, recorded = self._recorder.run_recording(input_tensor, needed)
        return output, TailValues(recorded, input_tensor.shape[0])

    def tail_problem(self, layer_index: int, values: TailValues) -> str | None:
        """Why the recorded values cannot feed the tail on a new batch size, if they cannot.

        A value derived from the input that is not a tensor may hold the batch size
        (``bs = x.size(0)`` before the layer, ``x.view(bs, -1)`` after it). An int, or a
        shape whose first entry, equals the recorded batch size is taken to be it and is
        replaced by the chunk's row count (the caller's check on a different row count
        confirms it); ``None``, flags, floats and strings are kept; any other such value
        stops the tail.
        """
        for node in self._tail_inputs[layer_index]:
            value = values.recorded[node]
            batch_dependent = node in self._batch_dependent
            may_hold_batch_size = not isinstance(value, torch.Tensor) and not (
                _is_int_or_shape(value) or _holds_no_batch_size(value)
            )
            if batch_dependent and may_hold_batch_size:
                return (
                    f"the part after the layer uses {node.name} = {value!r}, computed "
                    "from the input before the layer"
                )
        return None

    def layer_output(self, layer_index: int, values: TailValues) -> Any:
        """The recorded output of ``layers[layer_index]``."""
        return values.recorded[self.layer_nodes[layer_index]]

    def run_tail(
        self, layer_index: int, layer_output: Any, rows: list[int], values: TailValues
    ) -> Any:
        """The model's output when ``layers[layer_index]`` outputs ``layer_output``.

        Row ``r`` of ``layer_output`` belongs to image ``rows[r]`` of the recorded
        batch; every other recorded value that has a batch axis is gathered to match.
        """
        # Everything before the layer is taken as given, so none of it runs again.
        environment: dict[torch.fx.Node, Any] = dict.fromkeys(
            self.nodes[: self._prefix_lengths[layer_index]]
        )
        for node in self._tail_inputs[layer_index]:
            value = values.recorded[node]
            if node in self._batch_dependent:
                value = _for_rows(node, value, rows, values.batch_size)
            environment[node] = value
        environment[self.layer_nodes[layer_index]] = layer_output
        return self._interpreter.run(initial_env=environment)


class TailValues(NamedTuple):
    """What one run recorded for the tails: node values and the batch size."""

    recorded: dict[torch.fx.Node, Any]
    batch_size: int


def _for_rows(node: torch.fx.Node, value: Any, rows: list[int], batch_size: int) -> Any:
    """A recorded batch-dependent value, made to fit ``rows`` instead of the batch.

    An int read from a shape is the batch size when it was read from axis 0 (an ``H``
    that happens to equal the batch size is not); an int of unknown origin is taken to be
    it when it equals the batch size.
    """
    if isinstance(value, torch.Tensor):
        return repeat_rows(value, rows)
    if isinstance(value, int) and value == batch_size:
        axis = _shape_axis_read_by(node)
        return len(rows) if axis is None or axis == 0 else value
    if isinstance(value, tuple) and value and value[0] == batch_size:
        return type(value)((len(rows), *value[1:]))
    return value


def repeat_rows(
    tensor: torch.Tensor, rows: list[int], out: torch.Tensor | None = None
) -> torch.Tensor:
    """``tensor[rows]``, written into ``out`` if given. ``rows`` come in runs of one image
    (1, 1, 1, 2, 2, ...): each run is one broadcast copy, about twice as fast on the CPU as
    advanced indexing (and index_select with repeated indices is far slower still)."""
    if out is None:
        out = torch.empty((len(rows), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    start = 0
    for image, run in itertools.groupby(rows):
        count = len(list(run))
        out[start : start + count].copy_(tensor[image : image + 1].expand(count, *tensor.shape[1:]))
        start += count
    return out


class _ForgetfulInterpreter(torch.fx.Interpreter):
    """An interpreter that keeps nothing of a run once it returns: torch.fx's own keeps its
    environment and its iterator over the arguments (the input batch) until the next run."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().run(*args, **kwargs)
        finally:
            self.env = {}
            self.args_iter = iter(())


class _RecordingInterpreter(_ForgetfulInterpreter):
    """Runs the graph and keeps the values of the nodes it is asked to record."""

    def run_recording(
        self, input_tensor: torch.Tensor, nodes: set[torch.fx.Node]
    ) -> tuple[Any, dict[torch.fx.Node, Any]]:
        self._to_record = nodes
        self._recorded: dict[torch.fx.Node, Any] = {}
        recorded = self._recorded
        try:
            return self.run(input_tensor), recorded
        finally:
            self._to_record, self._recorded = set(), {}

    def run_node(self, node: torch.fx.Node) -> Any:
        value = super().run_node(node)
        if node in self._to_record:
            self._recorded[node] = value
        return value


def _shape_axis_read_by(node: torch.fx.Node) -> int | None:
    """The axis whose size ``node`` reads (``x.size(1)``, ``x.shape[1]``, ``B, H, W, C =
    x.shape``), or ``None`` when it is not such a read."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim if isinstance(dim, int) else None
    if node.op == "call_function" and node.target is operator.getitem:
        source, index = node.args
        reads_shape = isinstance(source, torch.fx.Node) and (
            (source.op == "call_method" and source.target == "size" and len(source.args) == 1)
            or (
                source.op == "call_function"
                and source.target is getattr
                and source.args[1] == "shape"
            )
        )
        return index if reads_shape and isinstance(index, int) else None
    return None


def _holds_no_batch_size(value: Any) -> bool:
    """Values that cannot carry a batch size: ``None`` (timm's ``attn_mask``), flags,
    floats, strings, dtypes and devices."""
    return value is None or isinstance(value, (bool, float, str, torch.dtype, torch.device))


def _is_int_or_shape(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, tuple) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def _descendants_of_inputs(nodes: list[torch.fx.Node]) -> set[torch.fx.Node]:
    """The nodes whose values depend on the model's inputs (so have a batch axis)."""
    dependent: set[torch.fx.Node] = set()
    for node in nodes:  # graph order is topological
        if node.op == "placeholder" or any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    return dependent
