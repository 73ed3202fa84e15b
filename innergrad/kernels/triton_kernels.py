"""Triton kernels of the fused gradient-RNN (see `triton_rnn.py` for the math and the wrapper).

This module imports triton at the top and decorates its kernels when imported, and triton decides
there whether a kernel is compiled or interpreted (`TRITON_INTERPRET=1`). So it is never imported
by name: `triton_rnn._kernels()` loads it lazily, once per mode, under a mode-specific module name.

One program owns `BLOCK_B` rows of the batch and runs every time step; the weights are re-read each
step (they stay in L1/L2), and h and dL/dh never leave the chip. Widths are padded to powers of two
(at least 16, the smallest `tl.dot`); padded weight entries load as zero, which keeps the padded
lanes of every product out of the real ones.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..core.activations import kernel_codes

# Activation codes (constexpr ACT, from core's table: `_act3` has one branch per code) and
# dot-precision codes (constexpr PREC), shared with the wrapper.
ACT_CODES = kernel_codes("triton")
PREC_CODES = {"ieee": 0, "tf32": 1, "tf32x3": 2, "bf16": 3, "bf16_emulated": 4}


# `tl.sum` is itself a `@triton.jit` function, decorated when triton was imported: a process that
# turns the interpreter on later (the test suite) cannot call it from an interpreted kernel. A
# reduction with the same combine function is what `tl.sum` does, and the interpreter recognises it.
_sum_combine = getattr(tl.standard, "_sum_combine", None)
if _sum_combine is None:  # pragma: no cover - older/newer triton without the private helper

    @triton.jit
    def _sum_combine(a, b):
        return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _sum_combine)


@triton.jit
def _act3(a, ACT: tl.constexpr):
    """`(s(a), s'(a), s''(a))` elementwise."""
    if ACT == 0:  # softplus, written to neither overflow nor lose the small-|a| tail
        e = tl.exp(-tl.abs(a))
        s = tl.maximum(a, 0.0) + tl.log(1.0 + e)
        sig = tl.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return s, sig, sig * (1.0 - sig)
    elif ACT == 1:  # tanh through exp: saturates cleanly at +-1 for large |a|
        t = 1.0 - 2.0 / (1.0 + tl.exp(2.0 * a))
        d = 1.0 - t * t
        return t, d, -2.0 * t * d
    elif ACT == 2:  # sigmoid
        e = tl.exp(-tl.abs(a))
        sig = tl.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        d = sig * (1.0 - sig)
        return sig, d, d * (1.0 - 2.0 * sig)
    elif ACT == 3:  # silu = a * sigmoid(a)
        e = tl.exp(-tl.abs(a))
        sig = tl.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        q = sig * (1.0 - sig)
        return a * sig, sig + a * q, q * (2.0 + a * (1.0 - 2.0 * sig))
    else:  # sin
        tl.static_assert(ACT == 5, "innergrad: unknown activation code")
        sn = tl.sin(a)
        return sn, tl.cos(a), -sn


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """`a @ b` accumulated in a's dtype (float32 or float64) at the requested operand precision."""
    if PREC == 3:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PREC == 4:  # bf16 rounding emulated in fp32: the interpreter cannot multiply bf16 arrays
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    elif PREC == 1:
        return tl.dot(a, b, input_precision="tf32")
    elif PREC == 2:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _wtile(P, r, c, rmask, cmask, PREC: tl.constexpr):
    """A zero-padded weight tile `P[r, c]` (pointer offsets r, c), bf16 for PREC 3."""
    w = tl.load(P + r + c, mask=rmask & cmask, other=0.0)
    if PREC == 3:
        w = w.to(tl.bfloat16)
    return w


@triton.jit
def gradrnn_fwd_kernel(
    X, H0, VALID, W1, B1, W2, B2, W3, B3,  # inputs
    Y, HS, A1S, A2S, US,  # outputs (A1S, A2S, US only when SAVE)
    T, B,
    DX: tl.constexpr, DH: tl.constexpr, W: tl.constexpr,
    DXP: tl.constexpr, DHP: tl.constexpr, WP: tl.constexpr, NB: tl.constexpr,
    BLOCK_B: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
    HAS_VALID: tl.constexpr, HAS_B3: tl.constexpr, SAVE: tl.constexpr, HOIST: tl.constexpr,
):
    """All T steps for rows [pid*BLOCK_B, (pid+1)*BLOCK_B): y_t, h_t and (SAVE) a1, a2, u per step.

    The second layer goes in column blocks of NB: a2[:, j] = s1 W2[j]^T, then u += g2[:, j] W2[j],
    so that no WP x WP weight tile is ever live (its layout conversion would need WP*WP*4 bytes of
    shared memory). HOIST (only with NB == WP) loads every weight tile once, before the time loop.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rm = rows < B
    r64 = rows.to(tl.int64)
    kx = tl.arange(0, DXP)
    kh = tl.arange(0, DHP)
    kw = tl.arange(0, WP)
    kb = tl.arange(0, NB)
    D = DX + DH
    mx = rm[:, None] & (kx[None, :] < DX)
    mh = rm[:, None] & (kh[None, :] < DH)
    mw = rm[:, None] & (kw[None, :] < W)
    b1 = tl.load(B1 + kw, mask=kw < W, other=0.0)
    if HAS_B3:
        b3 = tl.load(B3)
    else:
        b3 = 0.0
    h = tl.load(H0 + r64[:, None] * DH + kh[None, :], mask=mh, other=0.0)
    if HOIST:
        w1xT = _wtile(W1, kw[None, :] * D, kx[:, None], kw[None, :] < W, kx[:, None] < DX, PREC)
        w1hT = _wtile(W1 + DX, kw[None, :] * D, kh[:, None], kw[None, :] < W, kh[:, None] < DH, PREC)
        w1h = _wtile(W1 + DX, kw[:, None] * D, kh[None, :], kw[:, None] < W, kh[None, :] < DH, PREC)
        w2T = _wtile(W2, kb[None, :] * W, kw[:, None], kb[None, :] < W, kw[:, None] < W, PREC)
        w2 = _wtile(W2, kb[:, None] * W, kw[None, :], kb[:, None] < W, kw[None, :] < W, PREC)
    for t in range(T):
        if not HOIST:  # re-read each step, each tile just before its use (L1/L2 hits)
            w1xT = _wtile(W1, kw[None, :] * D, kx[:, None], kw[None, :] < W, kx[:, None] < DX, PREC)
            w1hT = _wtile(W1 + DX, kw[None, :] * D, kh[:, None], kw[None, :] < W, kh[:, None] < DH, PREC)
        x = tl.load(X + (t * B + r64[:, None]) * DX + kx[None, :], mask=mx, other=0.0)
        a1 = _mm(x, w1xT, PREC) + _mm(h, w1hT, PREC) + b1[None, :]
        if SAVE:  # stored at once, so a1 does not hold registers through the second layer
            tl.store(A1S + (t * B + r64[:, None]) * W + kw[None, :], a1, mask=mw)
        s1, d1, _ = _act3(a1, ACT)
        u = tl.full([BLOCK_B, WP], 0.0, a1.dtype)
        y = tl.full([BLOCK_B], 0.0, a1.dtype) + b3
        for j in tl.static_range(WP // NB):
            kn = j * NB + kb
            if not HOIST:
                w2T = _wtile(W2, kn[None, :] * W, kw[:, None], kn[None, :] < W, kw[:, None] < W, PREC)
            a2 = _mm(s1, w2T, PREC) + tl.load(B2 + kn, mask=kn < W, other=0.0)[None, :]
            s2, d2, _ = _act3(a2, ACT)
            w3 = tl.load(W3 + kn, mask=kn < W, other=0.0)
            y += _sum(s2 * w3[None, :], 1)
            if not HOIST:
                w2 = _wtile(W2, kn[:, None] * W, kw[None, :], kn[:, None] < W, kw[None, :] < W, PREC)
            u += _mm(d2 * w3[None, :], w2, PREC)
            if SAVE:
                tl.store(A2S + (t * B + r64[:, None]) * W + kn[None, :], a2, mask=rm[:, None] & (kn[None, :] < W))
        if not HOIST:
            w1h = _wtile(W1 + DX, kw[:, None] * D, kh[None, :], kw[:, None] < W, kh[None, :] < DH, PREC)
        hn = _mm(d1 * u, w1h, PREC)
        if HAS_VALID:
            v = tl.load(VALID + t * B + r64, mask=rm, other=0) != 0
            hn = tl.where(v[:, None], hn, h)
            y = tl.where(v, y, 0.0)
        tl.store(Y + t * B + r64, y, mask=rm)
        tl.store(HS + (t * B + r64[:, None]) * DH + kh[None, :], hn, mask=mh)
        if SAVE:
            tl.store(US + (t * B + r64[:, None]) * W + kw[None, :], u, mask=mw)
        h = hn


@triton.jit
def gradrnn_bwd_kernel(
    X, H0, HS, VALID, W1, B1, W2, B2, W3,  # forward inputs and outputs
    A1S, A2S, US,  # saved by the forward (when not RECOMPUTE)
    DY, DHS,  # incoming gradients of y (T, B) and hs (T, B, DH)
    GH,  # (B, DH) dL/dh carried between chunks: read at t_hi, written at t_lo
    S, QA,  # scratch: S (7, TC, B, W) = g1, da1, g2, da2, du, s1, dL/dw3 terms; QA (2, TC, B, DH) =
    # gh_eff, h_prev
    t_lo, t_hi, TC, B,
    DX: tl.constexpr, DH: tl.constexpr, W: tl.constexpr,
    DXP: tl.constexpr, DHP: tl.constexpr, WP: tl.constexpr, NB: tl.constexpr,
    BLOCK_B: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
    HAS_VALID: tl.constexpr, RECOMPUTE: tl.constexpr, HOIST: tl.constexpr,
):
    """Steps t_hi-1 down to t_lo: carry dL/dh, write the per-step factors of the weight gradients.

    With gh the total dL/dh_t (carried + from hs), a step's adjoints are
    dg1 = gh W1h^T, du = s'(a1) dg1, dg2 = du W2^T, da2 = w3 (s''(a2) dg2 + s'(a2) dy),
    da1 = s'(a1) (da2 W2) + s''(a1) u dg1, and dL/dh_{t-1} = da1 W1h. The weight gradients are
    dW1h = g1^T gh + da1^T h_prev, dW1x = da1^T x, dW2 = g2^T du + da2^T s1, dw3 = s'(a2) dg2 +
    s(a2) dy: sums over every
    (t, b), done afterwards as matrix products over the scratch (off the recurrence's critical path).
    The second layer goes in column blocks of NB, as in the forward.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rm = rows < B
    r64 = rows.to(tl.int64)
    kx = tl.arange(0, DXP)
    kh = tl.arange(0, DHP)
    kw = tl.arange(0, WP)
    kb = tl.arange(0, NB)
    D = DX + DH
    mx = rm[:, None] & (kx[None, :] < DX)
    mh = rm[:, None] & (kh[None, :] < DH)
    mw = rm[:, None] & (kw[None, :] < W)
    b1 = tl.load(B1 + kw, mask=kw < W, other=0.0)
    gh = tl.load(GH + r64[:, None] * DH + kh[None, :], mask=mh, other=0.0)
    h0 = tl.load(H0 + r64[:, None] * DH + kh[None, :], mask=mh, other=0.0)
    TB = TC * B
    if HOIST:
        w1xT = _wtile(W1, kw[None, :] * D, kx[:, None], kw[None, :] < W, kx[:, None] < DX, PREC)
        w1hT = _wtile(W1 + DX, kw[None, :] * D, kh[:, None], kw[None, :] < W, kh[:, None] < DH, PREC)
        w1h = _wtile(W1 + DX, kw[:, None] * D, kh[None, :], kw[:, None] < W, kh[None, :] < DH, PREC)
        w2T = _wtile(W2, kb[None, :] * W, kw[:, None], kb[None, :] < W, kw[:, None] < W, PREC)
        w2 = _wtile(W2, kb[:, None] * W, kw[None, :], kb[:, None] < W, kw[None, :] < W, PREC)
    for i in range(t_hi - t_lo):
        t = t_hi - 1 - i
        tau = t - t_lo
        ho = (t * B + r64[:, None]) * DH + kh[None, :]
        gh += tl.load(DHS + ho, mask=mh, other=0.0)
        gy = tl.load(DY + t * B + r64, mask=rm, other=0.0)
        tp = tl.maximum(t - 1, 0)
        hp = tl.load(HS + (tp * B + r64[:, None]) * DH + kh[None, :], mask=mh, other=0.0)
        hp = tl.where(t > 0, hp, h0)
        if HAS_VALID:
            v = tl.load(VALID + t * B + r64, mask=rm, other=0) != 0
            gy = tl.where(v, gy, 0.0)
            ge = tl.where(v[:, None], gh, 0.0)
        else:
            ge = gh
        # Each factor is stored as soon as it exists: a stored tile frees its registers, and the
        # backward is short of registers at widths >= 128.
        qo = (tau * B + r64[:, None]) * DH + kh[None, :]
        tl.store(QA + qo, ge, mask=mh)
        tl.store(QA + TB * DH + qo, hp, mask=mh)
        off = (t * B + r64[:, None]) * W + kw[None, :]
        so = (tau * B + r64[:, None]) * W
        if RECOMPUTE:
            if not HOIST:
                w1xT = _wtile(W1, kw[None, :] * D, kx[:, None], kw[None, :] < W, kx[:, None] < DX, PREC)
            x = tl.load(X + (t * B + r64[:, None]) * DX + kx[None, :], mask=mx, other=0.0)
            a1 = _mm(x, w1xT, PREC)
        else:
            a1 = tl.load(A1S + off, mask=mw, other=0.0)
        if not HOIST:
            w1hT = _wtile(W1 + DX, kw[None, :] * D, kh[:, None], kw[None, :] < W, kh[:, None] < DH, PREC)
        if RECOMPUTE:
            a1 += _mm(hp, w1hT, PREC) + b1[None, :]
        s1, d1, dd1 = _act3(a1, ACT)
        tl.store(S + 5 * TB * W + so + kw[None, :], s1, mask=mw)
        dg1 = _mm(ge, w1hT, PREC)
        du = d1 * dg1
        tl.store(S + 4 * TB * W + so + kw[None, :], du, mask=mw)
        if RECOMPUTE:
            u = tl.full([BLOCK_B, WP], 0.0, a1.dtype)
        else:
            u = tl.load(US + off, mask=mw, other=0.0)
            tl.store(S + so + kw[None, :], d1 * u, mask=mw)
            c1 = dd1 * u * dg1
        ds1 = tl.full([BLOCK_B, WP], 0.0, a1.dtype)
        for j in tl.static_range(WP // NB):
            kn = j * NB + kb
            mn = rm[:, None] & (kn[None, :] < W)
            if not HOIST:
                w2T = _wtile(W2, kn[None, :] * W, kw[:, None], kn[None, :] < W, kw[:, None] < W, PREC)
            if RECOMPUTE:
                a2 = _mm(s1, w2T, PREC) + tl.load(B2 + kn, mask=kn < W, other=0.0)[None, :]
            else:
                a2 = tl.load(A2S + (t * B + r64[:, None]) * W + kn[None, :], mask=mn, other=0.0)
            s2, d2, dd2 = _act3(a2, ACT)
            w3 = tl.load(W3 + kn, mask=kn < W, other=0.0)
            g2 = d2 * w3[None, :]
            tl.store(S + 2 * TB * W + so + kn[None, :], g2, mask=mn)
            dg2 = _mm(du, w2T, PREC)
            tl.store(S + 6 * TB * W + so + kn[None, :], d2 * dg2 + gy[:, None] * s2, mask=mn)
            da2 = w3[None, :] * (dd2 * dg2 + d2 * gy[:, None])
            tl.store(S + 3 * TB * W + so + kn[None, :], da2, mask=mn)
            if not HOIST:
                w2 = _wtile(W2, kn[:, None] * W, kw[None, :], kn[:, None] < W, kw[None, :] < W, PREC)
            if RECOMPUTE:
                u += _mm(g2, w2, PREC)
            ds1 += _mm(da2, w2, PREC)
        if RECOMPUTE:
            tl.store(S + so + kw[None, :], d1 * u, mask=mw)
            c1 = dd1 * u * dg1
        da1 = d1 * ds1 + c1
        tl.store(S + TB * W + so + kw[None, :], da1, mask=mw)
        if not HOIST:
            w1h = _wtile(W1 + DX, kw[:, None] * D, kh[None, :], kw[:, None] < W, kh[None, :] < DH, PREC)
        dh = _mm(da1, w1h, PREC)
        if HAS_VALID:
            gh = dh + tl.where(v[:, None], 0.0, gh)
        else:
            gh = dh
    tl.store(GH + r64[:, None] * DH + kh[None, :], gh, mask=mh)




# --- single calls: value_and_grad of an ig.MLP (see `triton_call.py`) ----------------------------
# The matrix products run as cuBLAS products between these kernels; each kernel does one layer's
# elementwise work in one pass (activation and s' in the forward; s', s'' and the chain's products in
# the backward) over the flattened (B, n) arrays. FROM_U: the saved array holds the layer's output u
# (softplus, tanh, sigmoid: s' and s'' follow from it), else the pre-activation a.


@triton.jit
def _d12_saved(s, ACT: tl.constexpr, FROM_U: tl.constexpr):
    """`(s'(a), s''(a))` from the saved array: u for FROM_U activations, else a."""
    if FROM_U:
        if ACT == 0:  # softplus: exp(-u) = 1 - sigmoid(a)
            ex = tl.exp(-s)
            d = 1.0 - ex
            return d, d * ex
        elif ACT == 1:
            d = 1.0 - s * s
            return d, -2.0 * s * d
        else:
            tl.static_assert(ACT == 2, "innergrad: FROM_U is for softplus, tanh and sigmoid")
            d = s * (1.0 - s)
            return d, (1.0 - 2.0 * s) * d
    else:
        _, d, e = _act3(s, ACT)
        return d, e


@triton.jit
def call_act_kernel(A, BIAS, S, U, D, N, NCOL, ACT: tl.constexpr, FROM_U: tl.constexpr, BLOCK: tl.constexpr):
    """a = A + bias; S = u (FROM_U) or a; U = u (not FROM_U); D = s'(a)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    a = tl.load(A + i, mask=m, other=0.0) + tl.load(BIAS + i % NCOL, mask=m, other=0.0)
    u, d, _ = _act3(a, ACT)
    if FROM_U:
        tl.store(S + i, u, mask=m)
    else:
        tl.store(S + i, a, mask=m)
        tl.store(U + i, u, mask=m)
    tl.store(D + i, d, mask=m)


@triton.jit
def call_chain_kernel(GB, S, Q, QB, AA, N, ACT: tl.constexpr, FROM_U: tl.constexpr, BLOCK: tl.constexpr):
    """qb = gb s'(a); aA = gb q s''(a) (the s'' term of dL/da)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    gb = tl.load(GB + i, mask=m, other=0.0)
    d, e = _d12_saved(tl.load(S + i, mask=m, other=0.0), ACT, FROM_U)
    tl.store(QB + i, gb * d, mask=m)
    tl.store(AA + i, gb * tl.load(Q + i, mask=m, other=0.0) * e, mask=m)


@triton.jit
def call_top_kernel(GB, S, YB, WO, QB, AB, G, N, NCOL, ACT: tl.constexpr, FROM_U: tl.constexpr,
                    BLOCK: tl.constexpr):
    """Last layer: qb = gb s'; ab = (gb s'' + yb s') w_o; g = s' w_o."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    gb = tl.load(GB + i, mask=m, other=0.0)
    yb = tl.load(YB + i // NCOL, mask=m, other=0.0)
    wo = tl.load(WO + i % NCOL, mask=m, other=0.0)
    d, e = _d12_saved(tl.load(S + i, mask=m, other=0.0), ACT, FROM_U)
    tl.store(QB + i, gb * d, mask=m)
    tl.store(AB + i, (gb * e + yb * d) * wo, mask=m)
    tl.store(G + i, d * wo, mask=m)


@triton.jit
def call_mid_kernel(T, S, AA, Q, AB, G, N, ACT: tl.constexpr, FROM_U: tl.constexpr, BLOCK: tl.constexpr):
    """Hidden layer k < L: ab = aA + (ab_{k+1} W_{k+1}) s'; g = s' q."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    d, _ = _d12_saved(tl.load(S + i, mask=m, other=0.0), ACT, FROM_U)
    tl.store(AB + i, tl.load(AA + i, mask=m, other=0.0) + tl.load(T + i, mask=m, other=0.0) * d, mask=m)
    tl.store(G + i, d * tl.load(Q + i, mask=m, other=0.0), mask=m)


__all__ = ["ACT_CODES", "PREC_CODES", "gradrnn_fwd_kernel", "gradrnn_bwd_kernel", "call_act_kernel",
           "call_chain_kernel", "call_top_kernel", "call_mid_kernel", "triton"]
