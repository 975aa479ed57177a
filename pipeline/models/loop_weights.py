"""Weights that a Python loop over time applies at every step, under autocast: cast once, gradient by one GEMM.

A decoder with input feeding must run its RNN one step at a time. Under bf16 autocast (as Lightning runs it, without
autocast's weight cache) every step then casts each weight to bf16, and every step's backward casts that weight's
gradient back to fp32 and adds it to ``.grad``: three passes over each weight per time step, which made the
translation config's copies alone a third of its step time. Here::

    forward:   W_low = W.to(bf16) once            y_t = x_t W_low^T + b_low   for t = 1..T
    backward:  dx_t = dy_t W_low                  (per step, as the chain through time needs it)
               dW = [dy_1; ..; dy_T]^T [x_1; ..; x_T]   one GEMM over all steps, summed in fp32 inside it
               db = sum_t dy_t                    in fp32

which is what the gradient of a shared weight is: the sum over time steps of the per-step gradients (the lecture's
"the gradient of W is summed over time steps"), computed the way cuDNN's RNN kernels do. The per-step backward
stores (dy_t, x_t); an "anchor" node between W and W_low runs after every step's backward (autograd's ordering)
and makes dW from them.

With input feeding the decoder's input is [embedding of the previous target token; previous h~], and only the second
half depends on the previous step. :class:`LoopRNN` can take the first half out of the loop (``ahead``)::

    x_t W_ih^T = e_t W_e^T + f_t W_f^T       W_ih = [W_e | W_f]  (3H, E + O) for a GRU
    [e_1; ..; e_T] W_e^T + b_ih              one (B*T, E) x (E, 3H) GEMM before the loop, autograd's own
    f_t W_f^T                                per step, half the columns, no per-step concatenation
"""

from __future__ import annotations

import torch
from torch import nn


class LoopLinear:
    """``nn.Linear``-like ``weight (O, I)``, ``bias (O,)`` applied at every step of one forward pass.

    Build one per forward (it holds that pass's per-step gradients), call it like the layer.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.box: dict[str, list] = {"dy": [], "x": []}
        self.dtype = dtype
        self.weight, self.weight_t, self.bias = _Anchor.apply(weight, bias, self.box, dtype)  # (O, I), (I, O)

    @classmethod
    def of(cls, layer: nn.Linear, dtype: torch.dtype) -> LoopLinear:
        return cls(layer.weight, layer.bias, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, I) -> (B, O) in the low dtype."""
        return _StepLinear.apply(x, self.weight, self.weight_t, self.bias, self.box)


class _Anchor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, box, dtype):
        ctx.box, ctx.has_bias = box, bias is not None
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.set_materialize_grads(False)
        low_b = bias.detach().to(dtype) if bias is not None else None
        low = weight.detach().to(dtype)
        # both layouts, each contiguous: a transposed operand of a bf16 GEMM is copied at every call
        return low, low.t().contiguous(), low_b

    @staticmethod
    def backward(ctx, _dw_none, _dwt_none, _db_none):
        box = ctx.box
        if not box["dy"]:
            return None, None, None, None
        dy, x = torch.cat(box["dy"]), torch.cat(box["x"])  # (T*B, O), (T*B, I) in the low dtype
        box["dy"].clear()
        box["x"].clear()
        dw = torch.mm(dy.t(), x).to(ctx.dtypes[0])  # (O, I)
        db = dy.float().sum(0).to(ctx.dtypes[1]) if ctx.has_bias else None
        return dw, db, None, None


class _StepLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, weight_t, bias, box):
        ctx.box, ctx.x_dtype = box, x.dtype
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight_t) if bias is not None else x @ weight_t

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy = dy.to(weight.dtype)
        ctx.box["dy"].append(dy)
        ctx.box["x"].append(x)
        dx = (dy @ weight).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None


class LoopBmm:
    """``torch.bmm(a_t, M)`` at every step for one fixed ``M (B, K, N)`` (the attention's keys and memory), with M's
    gradient as one bmm over all steps::

        forward:   y_t = a_t M                       a_t (B, 1, K) -> y_t (B, 1, N), per step
        backward:  da_t = dy_t M^T                   per step (M^T laid out once)
                   dM = [a_1; ..; a_T]^T [dy_1; ..; dy_T]    (B, K, T) x (B, T, N), summed in fp32 inside it

    instead of T outer products (B, K, N) added one by one to M's gradient (in bf16 under autocast): those adds
    were 8% of a translation step (Xeon, 1 thread). Build one per forward pass, like :class:`LoopLinear`.
    """

    def __init__(self, m: torch.Tensor) -> None:
        self.box: dict[str, list] = {"dy": [], "x": []}
        self.dtype = m.dtype
        self.m, self.m_t = _BmmAnchor.apply(m, self.box)  # (B, K, N), (B, N, K)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """a (B, 1, K) -> (B, 1, N)."""
        return _StepBmm.apply(a, self.m, self.m_t, self.box)


class _BmmAnchor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, box):
        ctx.box = box
        ctx.set_materialize_grads(False)
        return m.view_as(m), m.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, _dm_none, _dmt_none):
        box = ctx.box
        if not box["dy"]:
            return None, None
        a, dy = torch.cat(box["x"], dim=1), torch.cat(box["dy"], dim=1)  # (B, T, K), (B, T, N)
        box["x"].clear()
        box["dy"].clear()
        return torch.bmm(a.transpose(1, 2), dy), None  # (B, K, N)


class _StepBmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, m, m_t, box):
        ctx.box = box
        a = a.to(m.dtype)
        ctx.save_for_backward(a, m_t)
        return torch.bmm(a, m)

    @staticmethod
    def backward(ctx, dy):
        a, m_t = ctx.saved_tensors
        dy = dy.to(a.dtype)
        ctx.box["x"].append(a)
        ctx.box["dy"].append(dy)
        return (torch.bmm(dy, m_t) if ctx.needs_input_grad[0] else None), None, None, None


def gru_cell(gi: torch.Tensor, h: torch.Tensor, w_hh: LoopLinear) -> torch.Tensor:
    """One GRU step as ``nn.GRU`` computes it (gates r, z, n), from the input's projection gi = x W_ih^T + b_ih
    (B, 3H) and h (B, H) -> h' (B, H)."""
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = w_hh(h).chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h.to(n.dtype) - n)  # (1 - z) n + z h


def lstm_cell(
    gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: LoopLinear
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step as ``nn.LSTM`` computes it (gates i, f, g, o), from the input's projection gi (B, 4H):
    -> (h', c'), c kept in fp32."""
    gates = gi + w_hh(h)  # (B, 4H)
    i, f, g, o = gates.float().chunk(4, dim=1)
    c = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.to(gates.dtype), c


class LoopRNN:
    """A stacked ``nn.GRU`` / ``nn.LSTM`` run one step at a time with :class:`LoopLinear` weights.

    ``ahead``: the first ``ahead`` input columns of layer 0 are known for every step before the loop (the target
    embeddings under teacher forcing); :meth:`project` multiplies them by their part of ``W_ih`` in one GEMM, and
    :meth:`step` then takes only the remaining columns. Dropout between layers as the module applies it (training
    only). States are (L, B, H) like the module's.
    """

    def __init__(self, rnn: nn.RNNBase, dtype: torch.dtype, ahead: int = 0) -> None:
        if rnn.mode not in ("GRU", "LSTM") or rnn.bidirectional or rnn.proj_size:
            raise ValueError(f"LoopRNN runs unidirectional GRU and LSTM stacks, not {rnn}")
        self.rnn, self.lstm, self.ahead = rnn, rnn.mode == "LSTM", ahead
        self.layers = []
        for k in range(rnn.num_layers):
            w_ih, b_ih = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"bias_ih_l{k}", None)
            if k == 0 and ahead:  # the bias goes with the part computed ahead
                w_ih, b_ih = w_ih[:, ahead:], None
            hh = (getattr(rnn, f"weight_hh_l{k}"), getattr(rnn, f"bias_hh_l{k}", None))
            self.layers.append((LoopLinear(w_ih, b_ih, dtype), LoopLinear(*hh, dtype)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The ``ahead`` columns of every step at once: x (B, T, ahead) -> (B, T, gates * H), under autocast."""
        w_ih, b_ih = self.rnn.weight_ih_l0, getattr(self.rnn, "bias_ih_l0", None)
        return nn.functional.linear(x, w_ih[:, : self.ahead], b_ih)

    def step(self, x: torch.Tensor, state, projected: torch.Tensor | None = None):
        """x (B, I) (the columns after ``ahead``), state h (L, B, H) or (h, c) -> output (B, H), new state.
        ``projected``: this step's row of :meth:`project` (B, gates * H), needed when ``ahead`` > 0."""
        hs, cs, out = [], [], x
        for k, (w_ih, w_hh) in enumerate(self.layers):
            if k > 0 and self.rnn.dropout and self.rnn.training:
                out = nn.functional.dropout(out, self.rnn.dropout, training=True)
            gi = w_ih(out)
            if k == 0 and self.ahead:
                gi = gi + projected.to(gi.dtype)
            if self.lstm:
                out, c = lstm_cell(gi, state[0][k], state[1][k], w_hh)
                cs.append(c)
            else:
                out = gru_cell(gi, state[k], w_hh)
            hs.append(out)
        h = torch.stack(hs)
        return out, ((h, torch.stack(cs)) if self.lstm else h)
