"""A reverse-mode automatic differentiation engine from scratch, on NumPy arrays (scalars and small tensors).

Every ``Value`` holds an array ``data``, its gradient ``grad`` (dL/d data, same shape) and the node it came
from: its parents and a ``backward`` closure that, given the output's gradient, adds each parent's share
(the vector-Jacobian product) into the parent's ``grad``. ``loss.backward()`` orders the graph topologically
(every node after all the nodes computed from it, reversed: outputs first), seeds dL/dL = 1 and calls each
node's closure once, so a value used k times receives the sum of its k contributions (the chain rule).

Broadcasting follows NumPy: a parent broadcast to a larger shape gets its gradient summed back over the
broadcast axes (``_unbroadcast``). The ops: + - * / ** (a constant exponent), neg, @ (matrix products),
sum and mean (over all or some axes), max (over an axis, gradient to the argmax), exp, log, tanh, relu,
sigmoid, reshape, transpose; ``log_softmax`` and ``cross_entropy`` are built from them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

ArrayLike = float | int | np.ndarray


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes NumPy broadcast to reach its shape from ``shape``."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Value:
    """A node of the computational graph: ``data``, ``grad``, parents, the op's name and its backward rule."""

    def __init__(self, data: ArrayLike, parents: tuple[Value, ...] = (), op: str = "", label: str = ""):
        self.data = np.asarray(data, dtype=np.float64)
        self.grad = np.zeros_like(self.data)
        self.parents = parents
        self.op = op
        self.label = label
        self._backward: Callable[[np.ndarray], None] = lambda grad: None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Value({self.data!r}, op={self.op!r})"

    @staticmethod
    def lift(x: Value | ArrayLike) -> Value:
        return x if isinstance(x, Value) else Value(x)

    def _child(self, data: np.ndarray, parents: tuple[Value, ...], op: str,
               backward: Callable[[np.ndarray], None]) -> Value:
        out = Value(data, parents, op)
        out._backward = backward
        return out

    # binary ops: each parent's gradient is the output gradient times d out / d parent, unbroadcast
    def __add__(self, other: Value | ArrayLike) -> Value:
        other = Value.lift(other)

        def backward(g):
            self.grad += _unbroadcast(g, self.shape)
            other.grad += _unbroadcast(g, other.shape)
        return self._child(self.data + other.data, (self, other), "+", backward)

    def __mul__(self, other: Value | ArrayLike) -> Value:
        other = Value.lift(other)

        def backward(g):
            self.grad += _unbroadcast(g * other.data, self.shape)
            other.grad += _unbroadcast(g * self.data, other.shape)
        return self._child(self.data * other.data, (self, other), "*", backward)

    def __truediv__(self, other: Value | ArrayLike) -> Value:
        other = Value.lift(other)

        def backward(g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
            self.grad += _unbroadcast(g / other.data, self.shape)
            other.grad += _unbroadcast(-g * self.data / other.data**2, other.shape)
        return self._child(self.data / other.data, (self, other), "/", backward)

    def __pow__(self, exponent: float) -> Value:
        def backward(g):  # d x^p / dx = p x^(p-1)
            self.grad += g * exponent * self.data ** (exponent - 1)
        return self._child(self.data**exponent, (self,), f"**{exponent:g}", backward)

    def __matmul__(self, other: Value | ArrayLike) -> Value:
        """Matrix products of 2-D operands (a vector operand is treated as a row or column, as in NumPy)."""
        other = Value.lift(other)
        a = self.data if self.data.ndim > 1 else self.data[None, :]
        b = other.data if other.data.ndim > 1 else other.data[:, None]

        def backward(g):  # C = A B: dA = dC B^T, dB = A^T dC
            g2 = g.reshape(a.shape[0], b.shape[1])
            self.grad += (g2 @ b.T).reshape(self.shape)
            other.grad += (a.T @ g2).reshape(other.shape)
        return self._child(self.data @ other.data, (self, other), "@", backward)

    def __neg__(self) -> Value:
        return self * -1.0

    def __sub__(self, other: Value | ArrayLike) -> Value:
        return self + (-Value.lift(other))

    def __radd__(self, other: ArrayLike) -> Value:
        return self + other

    def __rsub__(self, other: ArrayLike) -> Value:
        return Value.lift(other) - self

    def __rmul__(self, other: ArrayLike) -> Value:
        return self * other

    def __rtruediv__(self, other: ArrayLike) -> Value:
        return Value.lift(other) / self

    # reductions and shape ops
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Value:
        def backward(g):  # every summed entry receives the gradient of its sum
            if not keepdims and axis is not None:
                g = np.expand_dims(g, axis)
            self.grad += np.broadcast_to(g, self.shape)
        return self._child(self.data.sum(axis=axis, keepdims=keepdims), (self,), "sum", backward)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Value:
        total = self.sum(axis, keepdims)
        return total / (self.data.size // total.data.size)

    def max(self, axis: int, keepdims: bool = False) -> Value:
        """The maximum along ``axis``; its gradient goes to the first entry that attains it."""
        index = np.expand_dims(self.data.argmax(axis=axis), axis)

        def backward(g):
            mask = np.zeros_like(self.data)
            np.put_along_axis(mask, index, 1.0, axis=axis)
            self.grad += mask * (g if keepdims else np.expand_dims(g, axis))
        data = np.take_along_axis(self.data, index, axis=axis)
        return self._child(data if keepdims else data.squeeze(axis), (self,), "max", backward)

    def reshape(self, *shape: int) -> Value:
        def backward(g):
            self.grad += g.reshape(self.shape)
        return self._child(self.data.reshape(*shape), (self,), "reshape", backward)

    @property
    def T(self) -> Value:
        def backward(g):
            self.grad += g.T
        return self._child(self.data.T, (self,), "T", backward)

    # elementwise functions: gradient times the derivative, written with the output where that is cheaper
    def exp(self) -> Value:
        out_data = np.exp(self.data)

        def backward(g):
            self.grad += g * out_data
        return self._child(out_data, (self,), "exp", backward)

    def log(self) -> Value:
        def backward(g):
            self.grad += g / self.data
        return self._child(np.log(self.data), (self,), "log", backward)

    def tanh(self) -> Value:
        out_data = np.tanh(self.data)

        def backward(g):  # tanh' = 1 - tanh^2
            self.grad += g * (1.0 - out_data**2)
        return self._child(out_data, (self,), "tanh", backward)

    def sigmoid(self) -> Value:
        out_data = 1.0 / (1.0 + np.exp(-self.data))

        def backward(g):  # s' = s (1 - s)
            self.grad += g * out_data * (1.0 - out_data)
        return self._child(out_data, (self,), "sigmoid", backward)

    def relu(self) -> Value:
        def backward(g):
            self.grad += g * (self.data > 0)
        return self._child(np.maximum(self.data, 0.0), (self,), "relu", backward)

    # reverse mode
    def topological_order(self) -> list[Value]:
        """Every node this value depends on, each after all its parents (iterative depth-first search)."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node.parents if id(p) not in seen)
        return order

    def backward(self) -> None:
        """dself/dv into ``v.grad`` for every node v of the graph (accumulating, like torch: zero grads first)."""
        self.grad = self.grad + np.ones_like(self.data)
        for node in reversed(self.topological_order()):
            node._backward(node.grad)


def zero_grad(values: Iterable[Value]) -> None:
    for v in values:
        v.grad = np.zeros_like(v.data)


def log_softmax(logits: Value) -> Value:
    """log softmax over the last axis, stably: z - max(z) - log(sum(exp(z - max(z))))."""
    shifted = logits - Value(logits.data.max(axis=-1, keepdims=True))  # a constant: the result does not depend on it
    return shifted - shifted.exp().sum(axis=-1, keepdims=True).log()


def cross_entropy(logits: Value, labels: np.ndarray) -> Value:
    """Mean over the batch of -log softmax(logits)[label]: the one-hot mask picks each row's label."""
    one_hot = np.eye(logits.shape[-1])[labels]
    return -(log_softmax(logits) * one_hot).sum(axis=-1).mean()
