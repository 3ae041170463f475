"""Fused Triton Euler rollout: one program per sample runs all T steps (forward and BPTT backward).

Why fused: the reference launches ~20 small torch ops per Euler step, so a rollout of T steps is
launch-bound; here the whole trajectory (and its adjoint) is one launch per direction.

Layout per program b (one CTA), per step:
  A. table[n, u] = MLP_sub([c_n, |s|_u])  -> global (B, N*U), or (B, T, N*U) + d/dc kept for BPTT
  B. v_j = k_j * prod_m table[gidx[j, m]]            -> global scratch (B, R)
  C. dc_n = sum_q S_n,q v_{ell[n, q]} + scale * MLP_node([c_n, a_n]); c <- max(c + dt dc, 0)
Phases are separated by tl.debug_barrier() (a CTA-wide barrier: later phases read scratch written
by other threads of the same program). The reaction scatter S v is a gather over an ELL list of
each metabolite's reactions, so it needs no atomics and is deterministic.

MLPs are packed into zero-padded (L, H, H) weight / (L, H) bias tensors, H a power of two >= 16
(tl.dot's minimum), so any hidden width, input width (1 + D) and depth L >= 2 works; zero padding
keeps the padded units at exactly 0 through tanh. Only the H x H hidden layers are matmuls: the
first layer (1 + D or 2 real inputs) is a rank-1 update plus a per-row base, and the scalar output
layer a row dot product, which cuts the matmul work 3x for L = 3 and keeps registers in bounds.
float32 matmuls use 3xTF32 tensor-core products (float32-level accuracy, see DEFAULT_TUNING).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from kernels.functional import FrozenReactions, Layers


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _tanh(x):
    """tanh from exp (tl has no portable tanh for fp32 and fp64 in the interpreter and on GPU)."""
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def _load_wt(w_ptr, l: tl.constexpr, H: tl.constexpr):
    """Layer l's W^T as (H_in, H_out) from the packed (L, H_out, H_in) buffer."""
    offs = tl.arange(0, H)
    return tl.load(w_ptr + l * H * H + offs[None, :] * H + offs[:, None])


@triton.jit
def _col(w_ptr, i, H: tl.constexpr):
    """Column i of the first layer's W, (H_out,): the weights of input feature i."""
    return tl.load(w_ptr + tl.arange(0, H) * H + i)


@triton.jit
def _hidden(c, base, w_ptr, b_ptr, K: tl.constexpr, H: tl.constexpr, PREC: tl.constexpr,
            DT: tl.constexpr):
    """Activation after the first layer and K hidden H x H layers, rows (BLOCK, H).

    The first layer has 1 + D (or 2) real inputs, so it is a rank-1 update c * W[:, 0] plus
    `base` (bias + the inputs that are not c, computed by the caller) rather than a padded matmul.
    """
    offs = tl.arange(0, H)
    a = _tanh(c[:, None] * _col(w_ptr, 0, H)[None, :] + base)
    for k in tl.static_range(1, K + 1):
        h = tl.dot(a, _load_wt(w_ptr, k, H), input_precision=PREC, out_dtype=DT)
        a = _tanh(h + tl.load(b_ptr + k * H + offs)[None, :])
    return a


@triton.jit
def _head(a, w_ptr, b_ptr, L: tl.constexpr, H: tl.constexpr):
    """The scalar output layer (row 0 of layer L-1) as a row dot product, (BLOCK,)."""
    offs = tl.arange(0, H)
    w = tl.load(w_ptr + (L - 1) * H * H + offs)
    return tl.sum(a * w[None, :], axis=1) + tl.load(b_ptr + (L - 1) * H)


@triton.jit
def _mlp_out(c, base, w_ptr, b_ptr, L: tl.constexpr, H: tl.constexpr, PREC: tl.constexpr,
             DT: tl.constexpr):
    """The tanh MLP's scalar output for rows whose first input is c (see _hidden for base)."""
    return _head(_hidden(c, base, w_ptr, b_ptr, L - 2, H, PREC, DT), w_ptr, b_ptr, L, H)


@triton.jit
def _mlp_out_jvp(c, base, w_ptr, b_ptr, L: tl.constexpr, H: tl.constexpr, PREC: tl.constexpr,
                 DT: tl.constexpr):
    """(output, d output / d c) via forward mode: the tangent of c pushed through every layer."""
    offs = tl.arange(0, H)
    w0 = _col(w_ptr, 0, H)[None, :]
    a = _tanh(c[:, None] * w0 + base)
    ta = (1.0 - a * a) * w0
    for k in tl.static_range(1, L - 1):
        wt = _load_wt(w_ptr, k, H)
        a = _tanh(tl.dot(a, wt, input_precision=PREC, out_dtype=DT)
                  + tl.load(b_ptr + k * H + offs)[None, :])
        ta = tl.dot(ta, wt, input_precision=PREC, out_dtype=DT) * (1.0 - a * a)
    w = tl.load(w_ptr + (L - 1) * H * H + offs)[None, :]
    return tl.sum(a * w, axis=1) + tl.load(b_ptr + (L - 1) * H), tl.sum(ta * w, axis=1)


@triton.jit
def _mlp_backward(c, base, a, gy, w_ptr, b_ptr, gw_ptr, gb_ptr, L: tl.constexpr,
                  H: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    """Backprop gy (BLOCK,) = dLoss/d output; a = _hidden(c, base, ..., L-2) from the forward.

    Adds the gradients of layers 1..L-1 and of the first bias into this program's (L, H, H) /
    (L, H) accumulators and returns dLoss/d(first-layer pre-activation) (BLOCK, H): the caller
    turns it into the first layer's weight columns and the input gradients it needs.
    Earlier activations are recomputed (O(L^2) matmuls; one for L = 3) rather than stored.
    """
    offs = tl.arange(0, H)
    lw = gw_ptr + (L - 1) * H * H + offs
    tl.store(lw, tl.load(lw) + tl.sum(gy[:, None] * a, axis=0))
    lb = gb_ptr + (L - 1) * H
    tl.store(lb, tl.load(lb) + tl.sum(gy, axis=0))
    ga = gy[:, None] * tl.load(w_ptr + (L - 1) * H * H + offs)[None, :]
    for kk in tl.static_range(L - 2):
        # hidden layer k = L-2-kk, spelled out so it stays a compile-time constant
        gpre = ga * (1.0 - a * a)
        a = _hidden(c, base, w_ptr, b_ptr, L - 3 - kk, H, PREC, DT)
        gw = tl.dot(tl.trans(gpre), a, input_precision=PREC, out_dtype=DT)  # (H_out, H_in)
        wp = gw_ptr + (L - 2 - kk) * H * H + offs[:, None] * H + offs[None, :]
        tl.store(wp, tl.load(wp) + gw)
        bp = gb_ptr + (L - 2 - kk) * H + offs
        tl.store(bp, tl.load(bp) + tl.sum(gpre, axis=0))
        w = tl.load(w_ptr + (L - 2 - kk) * H * H + offs[:, None] * H + offs[None, :])
        ga = tl.dot(gpre, w, input_precision=PREC, out_dtype=DT)  # (BLOCK, H_in)
    gpre = ga * (1.0 - a * a)
    tl.store(gb_ptr + offs, tl.load(gb_ptr + offs) + tl.sum(gpre, axis=0))
    return gpre


@triton.jit
def _add_col(gw_ptr, i, v, H: tl.constexpr):
    """First layer's weight column i += v (H,)."""
    p = gw_ptr + tl.arange(0, H) * H + i
    tl.store(p, tl.load(p) + v)


@triton.jit
def _node_base(emb_ptr, rows, rm, D, w_ptr, b_ptr, H: tl.constexpr, DT: tl.constexpr):
    """First-layer pre-activation of MLP_node without the c term: b0 + sum_d a_nd W0[:, 1+d]."""
    base = tl.zeros([rows.shape[0], H], dtype=DT) + tl.load(b_ptr + tl.arange(0, H))[None, :]
    for d in range(D):
        e = tl.load(emb_ptr + rows * D + d, mask=rm, other=0.0)
        base += e[:, None] * _col(w_ptr, 1 + d, H)[None, :]
    return base


@triton.jit
def _sub_base(cu, w_ptr, b_ptr, H: tl.constexpr):
    """First-layer pre-activation of MLP_sub without the c term: b0 + |s|_u W0[:, 1], (1, H)."""
    return (tl.load(b_ptr + tl.arange(0, H)) + cu * _col(w_ptr, 1, H))[None, :]


@triton.jit
def _table(prev, tab_b, dtab_b, sw_ptr, sb_ptr, coeff_ptr, N, U, LS: tl.constexpr,
           HS: tl.constexpr, BLOCK_N: tl.constexpr, WITH_JVP: tl.constexpr, PREC: tl.constexpr,
           DT: tl.constexpr):
    """Phase A: table[n, u] = MLP_sub(c_n, |s|_u) (and its d/dc when WITH_JVP)."""
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rm = rows < N
        c = tl.load(prev + rows, mask=rm, other=0.0)
        for u in range(U):
            base = _sub_base(tl.load(coeff_ptr + u), sw_ptr, sb_ptr, HS)
            if WITH_JVP:
                y, dy = _mlp_out_jvp(c, base, sw_ptr, sb_ptr, LS, HS, PREC, DT)
                tl.store(dtab_b + rows * U + u, dy, mask=rm)
            else:
                y = _mlp_out(c, base, sw_ptr, sb_ptr, LS, HS, PREC, DT)
            tl.store(tab_b + rows * U + u, y, mask=rm)
    tl.debug_barrier()


@triton.jit
def _products(tab_b, v_b, gidx_ptr, k_ptr, R, M: tl.constexpr, BLOCK_R: tl.constexpr):
    """Phase B: v_j = k_j * prod_m table[gidx[j, m]]."""
    for r0 in range(0, R, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        rmask = rr < R
        v = tl.load(k_ptr + rr, mask=rmask, other=0.0)
        for m in tl.static_range(M):
            gi = tl.load(gidx_ptr + rr * M + m, mask=rmask, other=-1)
            v = v * tl.load(tab_b + gi, mask=rmask & (gi >= 0), other=1.0)
        tl.store(v_b + rr, v, mask=rmask)
    tl.debug_barrier()


@triton.jit
def _reaction_dcdt(v_b, ell_rxn_ptr, ell_val_ptr, rows, rm, Q, c):
    """sum_q S[n, ell[n, q]] * v[ell[n, q]] for a block of metabolites (the S v scatter, gathered)."""
    acc = tl.zeros_like(c)
    for q in range(Q):
        j = tl.load(ell_rxn_ptr + rows * Q + q, mask=rm, other=-1)
        s = tl.load(ell_val_ptr + rows * Q + q, mask=rm, other=0.0)
        acc += s * tl.load(v_b + j, mask=rm & (j >= 0), other=0.0)
    return acc


@triton.jit
def _euler_block(prev, v_b, emb_ptr, nw_ptr, nb_ptr, ell_rxn_ptr, ell_val_ptr, rows, rm, dt,
                 scale, D, Q, LN: tl.constexpr, HN: tl.constexpr, PREC: tl.constexpr,
                 DT: tl.constexpr):
    """Phase C for a block of metabolites, shared by forward and backward: returns c, MLP_node's
    first-layer base, its last hidden activation and the unclamped next state z."""
    c = tl.load(prev + rows, mask=rm, other=0.0)
    rdc = _reaction_dcdt(v_b, ell_rxn_ptr, ell_val_ptr, rows, rm, Q, c)
    base = _node_base(emb_ptr, rows, rm, D, nw_ptr, nb_ptr, HN, DT)
    a = _hidden(c, base, nw_ptr, nb_ptr, LN - 2, HN, PREC, DT)
    z = c + dt * (rdc + scale * _head(a, nw_ptr, nb_ptr, LN, HN))
    return c, base, a, z


# ----------------------------------------------------------------------------- kernels


@triton.jit
def rollout_fwd_kernel(
        c0_ptr, emb_ptr, traj_ptr, params_ptr,
        nw_ptr, nb_ptr, sw_ptr, sb_ptr, coeff_ptr, gidx_ptr, k_ptr, ell_rxn_ptr, ell_val_ptr,
        tab_ptr, dtab_ptr, v_ptr,
        N, R, T, U, D, Q,
        M: tl.constexpr, LN: tl.constexpr, HN: tl.constexpr, LS: tl.constexpr,
        HS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, SAVE: tl.constexpr,
        SAVE_JVP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    """Whole rollout of sample b = program_id: writes states 1..T into traj (B, T, N).

    SAVE keeps every step's MLP_sub table in tab (B, T, N*U) for the backward (else tab is a
    (B, N*U) scratch); SAVE_JVP also keeps its d/dc in dtab, which the reaction Jacobian needs.
    """
    b = tl.program_id(0).to(tl.int64)
    dt = tl.load(params_ptr)
    scale = tl.load(params_ptr + 1)
    v_b = v_ptr + b * R
    traj_b = traj_ptr + b * T * N
    for t in range(T):
        if t == 0:
            prev = c0_ptr + b * N
        else:
            prev = traj_b + (t - 1) * N
        if SAVE:
            tab_b = tab_ptr + (b * T + t) * N * U
        else:
            tab_b = tab_ptr + b * N * U
        _table(prev, tab_b, dtab_ptr + (b * T + t) * N * U, sw_ptr, sb_ptr, coeff_ptr, N, U,
               LS, HS, BLOCK_N, SAVE_JVP, PREC, DT)
        _products(tab_b, v_b, gidx_ptr, k_ptr, R, M, BLOCK_R)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rm = rows < N
            _, _, _, z = _euler_block(prev, v_b, emb_ptr, nw_ptr, nb_ptr, ell_rxn_ptr,
                                      ell_val_ptr, rows, rm, dt, scale, D, Q, LN, HN, PREC, DT)
            tl.store(traj_b + t * N + rows, tl.maximum(z, 0.0), mask=rm)
        tl.debug_barrier()


@triton.jit
def rollout_bwd_kernel(
        c0_ptr, emb_ptr, traj_ptr, gout_ptr, params_ptr,
        nw_ptr, nb_ptr, gidx_ptr, k_ptr, ell_rxn_ptr, ell_val_ptr,
        st_idx_ptr, st_val_ptr, use_ptr,
        tab_ptr, dtab_ptr, v_ptr, gz_ptr, gfac_ptr, adj_ptr,
        gc0_ptr, gemb_ptr, gw_ptr, gb_ptr,
        N, R, T, U, D, Q, P, QU,
        M: tl.constexpr, LN: tl.constexpr, HN: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr, REACTION_GRAD: tl.constexpr, PREC: tl.constexpr,
        DT: tl.constexpr):
    """BPTT for sample b: walks t = T-1..0 recomputing step t from the stored trajectory and
    the MLP_sub tables (and their d/dc) the forward kept per step in tab / dtab (B, T, N*U).

    adj holds dLoss/dc_t; per step it becomes dLoss/dc_{t-1}. Partial grads for node weights,
    biases and embeddings of this sample accumulate in its (B, ...) slices; gc0 gets adj at the end.
    """
    b = tl.program_id(0).to(tl.int64)
    dt = tl.load(params_ptr)
    scale = tl.load(params_ptr + 1)
    v_b = v_ptr + b * R
    gz_b = gz_ptr + b * N
    gfac_b = gfac_ptr + b * R * M
    adj_b = adj_ptr + b * N
    traj_b = traj_ptr + b * T * N
    gout_b = gout_ptr + b * T * N
    gemb_b = gemb_ptr + b * N * D
    gw_b = gw_ptr + b * LN * HN * HN
    gb_b = gb_ptr + b * LN * HN
    for tt in range(T):
        t = T - 1 - tt
        if t == 0:
            prev = c0_ptr + b * N
        else:
            prev = traj_b + (t - 1) * N
        tab_b = tab_ptr + (b * T + t) * N * U
        dtab_b = dtab_ptr + (b * T + t) * N * U
        _products(tab_b, v_b, gidx_ptr, k_ptr, R, M, BLOCK_R)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rm = rows < N
            c, base, a, z = _euler_block(prev, v_b, emb_ptr, nw_ptr, nb_ptr, ell_rxn_ptr,
                                         ell_val_ptr, rows, rm, dt, scale, D, Q, LN, HN, PREC,
                                         DT)
            a_out = tl.load(adj_b + rows, mask=rm, other=0.0) + tl.load(gout_b + t * N + rows,
                                                                         mask=rm, other=0.0)
            gz = tl.where(z >= 0, a_out, 0.0)  # torch.clamp(min=0) passes grad where input >= 0
            if REACTION_GRAD:
                tl.store(gz_b + rows, gz, mask=rm)
            gpre = _mlp_backward(c, base, a, gz * (dt * scale), nw_ptr, nb_ptr, gw_b, gb_b, LN,
                                 HN, PREC, DT)
            # first layer: input 0 is c, inputs 1..D the embedding (rows past N have gpre = 0)
            _add_col(gw_b, 0, tl.sum(gpre * c[:, None], axis=0), HN)
            gc = tl.sum(gpre * _col(nw_ptr, 0, HN)[None, :], axis=1)
            for d in range(D):
                e = tl.load(emb_ptr + rows * D + d, mask=rm, other=0.0)
                _add_col(gw_b, 1 + d, tl.sum(gpre * e[:, None], axis=0), HN)
                ep = gemb_b + rows * D + d
                ge = tl.sum(gpre * _col(nw_ptr, 1 + d, HN)[None, :], axis=1)
                tl.store(ep, tl.load(ep, mask=rm, other=0.0) + ge, mask=rm)
            tl.store(adj_b + rows, gz + gc, mask=rm)
            tl.debug_barrier()
        if REACTION_GRAD:
            # d/dc of sum_n gz_n * dt * sum_j S_nj v_j: first dLoss/dv_j, then per substrate slot.
            for r0 in range(0, R, BLOCK_R):
                rr = r0 + tl.arange(0, BLOCK_R)
                rmask = rr < R
                gv = tl.zeros([BLOCK_R], dtype=DT)
                for p in range(P):
                    si = tl.load(st_idx_ptr + rr * P + p, mask=rmask, other=0)
                    sv = tl.load(st_val_ptr + rr * P + p, mask=rmask, other=0.0)
                    gv += sv * tl.load(gz_b + si, mask=rmask, other=0.0)
                gv = gv * dt * tl.load(k_ptr + rr, mask=rmask, other=0.0)
                for m in tl.static_range(M):
                    o = gv
                    for m2 in tl.static_range(M):
                        if m2 != m:
                            gi = tl.load(gidx_ptr + rr * M + m2, mask=rmask, other=-1)
                            o = o * tl.load(tab_b + gi, mask=rmask & (gi >= 0), other=1.0)
                    tl.store(gfac_b + rr * M + m, o, mask=rmask)
            tl.debug_barrier()
            for n0 in range(0, N, BLOCK_N):
                rows = n0 + tl.arange(0, BLOCK_N)
                rm = rows < N
                acc = tl.load(adj_b + rows, mask=rm, other=0.0)
                for u in range(U):
                    e = rows * U + u
                    gt = tl.zeros([BLOCK_N], dtype=DT)
                    for q in range(QU):
                        f = tl.load(use_ptr + e * QU + q, mask=rm, other=-1)
                        gt += tl.load(gfac_b + f, mask=rm & (f >= 0), other=0.0)
                    acc += gt * tl.load(dtab_b + e, mask=rm, other=0.0)
                tl.store(adj_b + rows, acc, mask=rm)
            tl.debug_barrier()
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rm = rows < N
        tl.store(gc0_ptr + b * N + rows, tl.load(adj_b + rows, mask=rm, other=0.0), mask=rm)


# ----------------------------------------------------------------------------- host side


def pow2_width(n: int, lo: int = 16) -> int:
    """The kernels' padded width for n: a power of two >= max(n, lo), lo being tl.dot's minimum."""
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def pack_layers(layers: Layers, width: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) list -> zero-padded (L, width, width) and (L, width) tensors."""
    w = torch.zeros(len(layers), width, width, dtype=dtype, device=device)
    bias = torch.zeros(len(layers), width, dtype=dtype, device=device)
    for l, (wl, bl) in enumerate(layers):
        w[l, : wl.shape[0], : wl.shape[1]] = wl.detach().to(dtype)
        bias[l, : bl.shape[0]] = bl.detach().to(dtype)
    return w, bias


def layers_width(layers: Layers) -> int:
    """Padded power-of-two width covering every layer's in and out size."""
    return pow2_width(max(max(w.shape) for w, _ in layers))


def _ell(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Group entry positions 0..K-1 by key: (n_keys, Q) positions, -1 = pad (Q >= 1)."""
    order = torch.argsort(keys, stable=True)
    sk = keys[order]
    counts = torch.bincount(sk, minlength=n_keys)
    width = max(int(counts.max()) if sk.numel() else 0, 1)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(sk.numel(), device=keys.device) - starts[sk]
    out = torch.full((n_keys, width), -1, dtype=torch.long, device=keys.device)
    out[sk, pos] = order
    return out


@dataclass
class ReactionPlan:
    """The frozen reaction term in the kernels' layout (built once per call, vectorized)."""

    sub_w: torch.Tensor
    sub_b: torch.Tensor
    coeff: torch.Tensor
    gidx: torch.Tensor  # (R, M) int32 flat table index n*U+u, -1 = padded slot
    k: torch.Tensor  # (R,)
    ell_rxn: torch.Tensor  # (N, Q) int32 reactions touching metabolite n, -1 = pad
    ell_val: torch.Tensor  # (N, Q) S[n, j]
    st_idx: torch.Tensor  # (R, P) int32
    st_val: torch.Tensor  # (R, P)
    use: torch.Tensor  # (N*U, QU) int32 flat slots j*M+m reading table entry, -1 = pad
    N: int
    R: int
    M: int
    U: int
    LS: int
    HS: int

    @classmethod
    def build(cls, fr: FrozenReactions, dtype, device) -> "ReactionPlan":
        fr = fr.to(dtype=dtype, device=device)
        N, U = fr.n_metabolites, fr.coeff_values.shape[0]
        R, M = fr.substrate_index.shape
        P = fr.stoich_index.shape[1]
        gidx = torch.where(fr.substrate_mask, fr.substrate_index * U + fr.substrate_coeff_id,
                           torch.full_like(fr.substrate_index, -1))
        st_flat = fr.stoich_value.reshape(-1)
        nz = torch.nonzero(st_flat != 0).flatten()
        pos = _ell(fr.stoich_index.reshape(-1)[nz], N)
        ell_rxn = torch.where(pos >= 0, nz[pos.clamp(min=0)] // P, -1)
        ell_val = torch.where(pos >= 0, st_flat[nz[pos.clamp(min=0)]], 0.0)
        used = torch.nonzero(gidx.reshape(-1) >= 0).flatten()
        upos = _ell(gidx.reshape(-1)[used], N * U)
        use = torch.where(upos >= 0, used[upos.clamp(min=0)], -1)
        HS = layers_width(fr.sub_layers)
        sw, sb = pack_layers(fr.sub_layers, HS, dtype, device)
        i32 = torch.int32
        return cls(sub_w=sw, sub_b=sb, coeff=fr.coeff_values.contiguous(),
                   gidx=gidx.to(i32).contiguous(), k=(10.0 ** fr.log10_k).contiguous(),
                   ell_rxn=ell_rxn.to(i32).contiguous(), ell_val=ell_val.contiguous(),
                   st_idx=fr.stoich_index.to(i32).contiguous(),
                   st_val=fr.stoich_value.contiguous(), use=use.to(i32).contiguous(),
                   N=N, R=R, M=M, U=U, LS=len(fr.sub_layers), HS=HS)


@dataclass(frozen=True)
class Tuning:
    """Launch settings of the fused kernels: dot precision, block sizes and warps per CTA."""

    prec: str
    block_n: int
    block_r: int
    num_warps: int


# Defaults per dtype, read-only: callers that try others (benchmarks/sweep_fused.py) pass a Tuning.
# float32: 3xTF32 tensor-core products (float32-level accuracy; plain fp32 FMA dots of 64-wide
# tiles spill thousands of registers to local memory on sm_90). float64: exact FMA products,
# smaller tiles (fp64 tiles take twice the registers and shared memory).
DEFAULT_TUNING = MappingProxyType({
    torch.float32: Tuning(prec="tf32x3", block_n=32, block_r=256, num_warps=4),
    torch.float64: Tuning(prec="ieee", block_n=16, block_r=64, num_warps=4),
})


def resolve_tuning(dtype, tuning: Tuning | None = None) -> Tuning:
    """`tuning` if given, else the default for `dtype`."""
    return tuning if tuning is not None else DEFAULT_TUNING[dtype]


def block_sizes(N: int, R: int, dtype, tuning: Tuning | None = None) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_R) for N metabolites, R reactions."""
    t = resolve_tuning(dtype, tuning)
    return min(pow2_width(N), t.block_n), min(pow2_width(R), t.block_r)


# Test hook: when not None, every buffer the kernels must fully overwrite (outputs and scratch)
# is filled with this value (e.g. NaN) instead of left uninitialised, so a missed write shows up.
POISON: float | None = None


def _empty(*shape, dtype, device) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype, device=device)
    return out if POISON is None else out.fill_(POISON)


def rollout_forward(c0: torch.Tensor, emb: torch.Tensor, node_w: torch.Tensor,
                    node_b: torch.Tensor, plan: ReactionPlan, dt: float, n_steps: int,
                    node_scale: float, save: bool = False, reaction_grad: bool = True,
                    tuning: Tuning | None = None):
    """Launch the fused forward: (B, N) -> (trajectory (B, T, N), tab, dtab); node_w/b packed.

    save=True keeps each step's MLP_sub table (and, with reaction_grad, its d/dc) for
    rollout_backward; otherwise tab/dtab are None. tuning None: DEFAULT_TUNING for c0's dtype.
    """
    B, N = c0.shape
    dev, dtype = c0.device, c0.dtype
    traj = _empty(B, n_steps, N, dtype=dtype, device=dev)
    if n_steps == 0 or B == 0:
        return traj, None, None
    U = plan.U
    tab = _empty(B, n_steps if save else 1, N * U, dtype=dtype, device=dev)
    save_jvp = save and reaction_grad
    dtab = _empty(B, n_steps, N * U, dtype=dtype, device=dev) if save_jvp else tab
    v = _empty(B, plan.R, dtype=dtype, device=dev)
    params = torch.tensor([dt, node_scale], dtype=dtype, device=dev)
    tuning = resolve_tuning(dtype, tuning)
    BN, BR = block_sizes(plan.N, plan.R, dtype, tuning)
    rollout_fwd_kernel[(B,)](
        c0, emb, traj, params, node_w, node_b, plan.sub_w, plan.sub_b, plan.coeff, plan.gidx,
        plan.k, plan.ell_rxn, plan.ell_val, tab, dtab, v,
        N, plan.R, n_steps, U, emb.shape[1], plan.ell_rxn.shape[1],
        M=plan.M, LN=node_w.shape[0], HN=node_w.shape[1], LS=plan.LS, HS=plan.HS,
        BLOCK_N=BN, BLOCK_R=BR, SAVE=bool(save), SAVE_JVP=bool(save_jvp), PREC=tuning.prec,
        DT=_tl_dtype(dtype), num_warps=tuning.num_warps)
    return traj, (tab if save else None), (dtab if save_jvp else None)


def rollout_backward(c0, emb, traj, grad_traj, node_w, node_b, plan: ReactionPlan, dt: float,
                     node_scale: float, reaction_grad: bool, tab, dtab,
                     tuning: Tuning | None = None):
    """Launch the fused BPTT: returns (grad c0, grad emb, grad packed W, grad packed b).

    tab / dtab: the per-step MLP_sub tables from rollout_forward(save=True) (dtab may be None
    when reaction_grad is False). tuning None: DEFAULT_TUNING for c0's dtype.
    """
    B, T, N = traj.shape
    dev, dtype = c0.device, c0.dtype
    D = emb.shape[1]
    LN, HN = node_w.shape[0], node_w.shape[1]
    R, M = plan.R, plan.M
    gc0 = _empty(B, N, dtype=dtype, device=dev)
    gemb = torch.zeros(B, N, D, dtype=dtype, device=dev)
    gw = torch.zeros(B, LN, HN, HN, dtype=dtype, device=dev)
    gb = torch.zeros(B, LN, HN, dtype=dtype, device=dev)
    if T == 0 or B == 0:
        gc0.copy_(grad_traj.new_zeros(B, N))
        return gc0, gemb.sum(0), gw.sum(0), gb.sum(0)
    if reaction_grad and dtab is None:
        raise ValueError("rollout_backward with reaction_grad needs dtab from the forward")
    v = _empty(B, R, dtype=dtype, device=dev)
    gz = _empty(B, N, dtype=dtype, device=dev)
    gfac = _empty(B, R * M, dtype=dtype, device=dev)
    adj = torch.zeros(B, N, dtype=dtype, device=dev)
    params = torch.tensor([dt, node_scale], dtype=dtype, device=dev)
    tuning = resolve_tuning(dtype, tuning)
    BN, BR = block_sizes(plan.N, plan.R, dtype, tuning)
    rollout_bwd_kernel[(B,)](
        c0, emb, traj, grad_traj.contiguous(), params, node_w, node_b,
        plan.gidx, plan.k, plan.ell_rxn, plan.ell_val, plan.st_idx, plan.st_val,
        plan.use, tab, dtab if dtab is not None else tab, v, gz, gfac, adj, gc0, gemb, gw, gb,
        N, R, T, plan.U, D, plan.ell_rxn.shape[1], plan.st_idx.shape[1], plan.use.shape[1],
        M=M, LN=LN, HN=HN, BLOCK_N=BN, BLOCK_R=BR,
        REACTION_GRAD=bool(reaction_grad), PREC=tuning.prec, DT=_tl_dtype(dtype),
        num_warps=tuning.num_warps)
    return gc0, gemb.sum(0), gw.sum(0), gb.sum(0)


def _tl_dtype(dtype):
    if dtype == torch.float32:
        return tl.float32
    if dtype == torch.float64:
        return tl.float64
    raise TypeError(f"fused rollout supports float32/float64, got {dtype}")
