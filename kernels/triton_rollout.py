"""Fused Triton Euler rollout: one program per sample runs all T steps (forward and BPTT backward).

Why fused: the reference launches ~20 small torch ops per Euler step, so a rollout of T steps is
launch-bound; here the whole trajectory (and its adjoint) is one launch per direction.

Layout per program b (one CTA), per step:
  A. table[n, u] = MLP_sub([c_n, |s|_u])            -> global scratch (B, N*U)   (+ d/dc in backward)
  B. v_j = k_j * prod_m table[gidx[j, m]]            -> global scratch (B, R)
  C. dc_n = sum_q S_n,q v_{ell[n, q]} + scale * MLP_node([c_n, a_n]); c <- max(c + dt dc, 0)
Phases are separated by tl.debug_barrier() (a CTA-wide barrier: later phases read scratch written
by other threads of the same program). The reaction scatter S v is a gather over an ELL list of
each metabolite's reactions, so it needs no atomics and is deterministic.

MLPs are packed into zero-padded (L, H, H) weight / (L, H) bias tensors, H a power of two >= 16
(tl.dot's minimum), so any hidden width, input width (1 + D) and depth works; zero padding keeps the
padded units at exactly 0 through tanh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.reference import FrozenReactions, Layers


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
def _mlp_out(x, w_ptr, b_ptr, L: tl.constexpr, H: tl.constexpr, PREC: tl.constexpr,
             DT: tl.constexpr):
    """First output column of the tanh MLP on rows x (BLOCK, H)."""
    offs = tl.arange(0, H)
    for l in tl.static_range(L):
        h = tl.dot(x, _load_wt(w_ptr, l, H), input_precision=PREC, out_dtype=DT)
        h = h + tl.load(b_ptr + l * H + offs)[None, :]
        if l < L - 1:
            x = _tanh(h)
        else:
            x = h
    return tl.sum(tl.where(offs[None, :] == 0, x, 0.0), axis=1)


@triton.jit
def _mlp_out_jvp(x, w_ptr, b_ptr, L: tl.constexpr, H: tl.constexpr, PREC: tl.constexpr,
                 DT: tl.constexpr):
    """(output, d output / d x[:, 0]) via forward-mode: tangent e_0 pushed through every layer."""
    offs = tl.arange(0, H)
    tx = tl.where(offs[None, :] == 0, 1.0, tl.zeros_like(x))
    for l in tl.static_range(L):
        wt = _load_wt(w_ptr, l, H)
        h = tl.dot(x, wt, input_precision=PREC, out_dtype=DT)
        h = h + tl.load(b_ptr + l * H + offs)[None, :]
        th = tl.dot(tx, wt, input_precision=PREC, out_dtype=DT)
        if l < L - 1:
            x = _tanh(h)
            tx = th * (1.0 - x * x)
        else:
            x = h
            tx = th
    first = offs[None, :] == 0
    return tl.sum(tl.where(first, x, 0.0), axis=1), tl.sum(tl.where(first, tx, 0.0), axis=1)


@triton.jit
def _mlp_backward(x0, g_out, w_ptr, b_ptr, gw_ptr, gb_ptr, L: tl.constexpr, H: tl.constexpr,
                  PREC: tl.constexpr, DT: tl.constexpr):
    """Backprop g_out (BLOCK,) = dLoss/d output through the MLP at rows x0 (BLOCK, H).

    Adds dW, db into this program's (L, H, H) / (L, H) accumulators and returns dLoss/dx0.
    Layer inputs are recomputed (O(L^2) small matmuls) instead of being spilled to memory.
    """
    offs = tl.arange(0, H)
    g = tl.where(offs[None, :] == 0, g_out[:, None], tl.zeros_like(x0))
    for ll in tl.static_range(L):
        # layer index L-1-ll, spelled out so it stays a compile-time constant
        x = x0
        for k in tl.static_range(L - 1 - ll):
            h = tl.dot(x, _load_wt(w_ptr, k, H), input_precision=PREC, out_dtype=DT)
            x = _tanh(h + tl.load(b_ptr + k * H + offs)[None, :])
        gw = tl.dot(tl.trans(g), x, input_precision=PREC, out_dtype=DT)  # (H_out, H_in)
        wp = gw_ptr + (L - 1 - ll) * H * H + offs[:, None] * H + offs[None, :]
        tl.store(wp, tl.load(wp) + gw)
        bp = gb_ptr + (L - 1 - ll) * H + offs
        tl.store(bp, tl.load(bp) + tl.sum(g, axis=0))
        w = tl.load(w_ptr + (L - 1 - ll) * H * H + offs[:, None] * H + offs[None, :])
        gx = tl.dot(g, w, input_precision=PREC, out_dtype=DT)  # (BLOCK, H_in)
        if L - 1 - ll > 0:
            g = gx * (1.0 - x * x)
        else:
            g = gx
    return g


@triton.jit
def _node_input(c, emb_ptr, rows, rmask, D, H: tl.constexpr):
    """Rows [c_n, a_n, 0...] (BLOCK, H) for MLP_node."""
    cols = tl.arange(0, H)
    emask = rmask[:, None] & (cols[None, :] >= 1) & (cols[None, :] <= D)
    e = tl.load(emb_ptr + rows[:, None] * D + (cols[None, :] - 1), mask=emask, other=0.0)
    return tl.where(cols[None, :] == 0, c[:, None], e)


@triton.jit
def _sub_input(c, cu, H: tl.constexpr):
    """Rows [c_n, |s|_u, 0...] (BLOCK, H) for MLP_sub."""
    cols = tl.arange(0, H)
    z = tl.zeros([c.shape[0], H], dtype=c.dtype)
    return tl.where(cols[None, :] == 0, c[:, None], tl.where(cols[None, :] == 1, cu, z))


@triton.jit
def _rates(prev, tab_b, v_b, dtab_b, sw_ptr, sb_ptr, coeff_ptr, gidx_ptr, k_ptr, N, R, U,
           M: tl.constexpr, LS: tl.constexpr, HS: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_R: tl.constexpr, WITH_JVP: tl.constexpr, PREC: tl.constexpr,
           DT: tl.constexpr):
    """Phases A and B: the MLP_sub table (and its d/dc when WITH_JVP) and the rates v."""
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rm = rows < N
        c = tl.load(prev + rows, mask=rm, other=0.0)
        for u in range(U):
            x = _sub_input(c, tl.load(coeff_ptr + u), HS)
            if WITH_JVP:
                y, dy = _mlp_out_jvp(x, sw_ptr, sb_ptr, LS, HS, PREC, DT)
                tl.store(dtab_b + rows * U + u, dy, mask=rm)
            else:
                y = _mlp_out(x, sw_ptr, sb_ptr, LS, HS, PREC, DT)
            tl.store(tab_b + rows * U + u, y, mask=rm)
    tl.debug_barrier()
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


# ----------------------------------------------------------------------------- kernels


@triton.jit
def rollout_fwd_kernel(
        c0_ptr, emb_ptr, traj_ptr, params_ptr,
        nw_ptr, nb_ptr, sw_ptr, sb_ptr, coeff_ptr, gidx_ptr, k_ptr, ell_rxn_ptr, ell_val_ptr,
        tab_ptr, v_ptr,
        N, R, T, U, D, Q,
        M: tl.constexpr, LN: tl.constexpr, HN: tl.constexpr, LS: tl.constexpr,
        HS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PREC: tl.constexpr,
        DT: tl.constexpr):
    """Whole rollout of sample b = program_id: writes states 1..T into traj (B, T, N)."""
    b = tl.program_id(0).to(tl.int64)
    dt = tl.load(params_ptr)
    scale = tl.load(params_ptr + 1)
    tab_b = tab_ptr + b * N * U
    v_b = v_ptr + b * R
    traj_b = traj_ptr + b * T * N
    for t in range(T):
        if t == 0:
            prev = c0_ptr + b * N
        else:
            prev = traj_b + (t - 1) * N
        _rates(prev, tab_b, v_b, tab_b, sw_ptr, sb_ptr, coeff_ptr, gidx_ptr, k_ptr, N, R, U,
               M, LS, HS, BLOCK_N, BLOCK_R, False, PREC, DT)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rm = rows < N
            c = tl.load(prev + rows, mask=rm, other=0.0)
            rdc = _reaction_dcdt(v_b, ell_rxn_ptr, ell_val_ptr, rows, rm, Q, c)
            node = _mlp_out(_node_input(c, emb_ptr, rows, rm, D, HN), nw_ptr, nb_ptr, LN, HN,
                            PREC, DT)
            z = c + dt * (rdc + scale * node)
            tl.store(traj_b + t * N + rows, tl.maximum(z, 0.0), mask=rm)
        tl.debug_barrier()


@triton.jit
def rollout_bwd_kernel(
        c0_ptr, emb_ptr, traj_ptr, gout_ptr, params_ptr,
        nw_ptr, nb_ptr, sw_ptr, sb_ptr, coeff_ptr, gidx_ptr, k_ptr, ell_rxn_ptr, ell_val_ptr,
        st_idx_ptr, st_val_ptr, use_ptr,
        tab_ptr, dtab_ptr, v_ptr, gz_ptr, gfac_ptr, adj_ptr,
        gc0_ptr, gemb_ptr, gw_ptr, gb_ptr,
        N, R, T, U, D, Q, P, QU,
        M: tl.constexpr, LN: tl.constexpr, HN: tl.constexpr, LS: tl.constexpr,
        HS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
        REACTION_GRAD: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    """BPTT for sample b: walks t = T-1..0 recomputing step t from the stored trajectory.

    adj holds dLoss/dc_t; per step it becomes dLoss/dc_{t-1}. Partial grads for node weights,
    biases and embeddings of this sample accumulate in its (B, ...) slices; gc0 gets adj at the end.
    """
    b = tl.program_id(0).to(tl.int64)
    dt = tl.load(params_ptr)
    scale = tl.load(params_ptr + 1)
    tab_b = tab_ptr + b * N * U
    dtab_b = dtab_ptr + b * N * U
    v_b = v_ptr + b * R
    gz_b = gz_ptr + b * N
    gfac_b = gfac_ptr + b * R * M
    adj_b = adj_ptr + b * N
    traj_b = traj_ptr + b * T * N
    gout_b = gout_ptr + b * T * N
    gemb_b = gemb_ptr + b * N * D
    gw_b = gw_ptr + b * LN * HN * HN
    gb_b = gb_ptr + b * LN * HN
    cols = tl.arange(0, HN)
    for tt in range(T):
        t = T - 1 - tt
        if t == 0:
            prev = c0_ptr + b * N
        else:
            prev = traj_b + (t - 1) * N
        _rates(prev, tab_b, v_b, dtab_b, sw_ptr, sb_ptr, coeff_ptr, gidx_ptr, k_ptr, N, R, U,
               M, LS, HS, BLOCK_N, BLOCK_R, REACTION_GRAD, PREC, DT)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rm = rows < N
            c = tl.load(prev + rows, mask=rm, other=0.0)
            rdc = _reaction_dcdt(v_b, ell_rxn_ptr, ell_val_ptr, rows, rm, Q, c)
            x0 = _node_input(c, emb_ptr, rows, rm, D, HN)
            node = _mlp_out(x0, nw_ptr, nb_ptr, LN, HN, PREC, DT)
            z = c + dt * (rdc + scale * node)
            a = tl.load(adj_b + rows, mask=rm, other=0.0) + tl.load(gout_b + t * N + rows,
                                                                     mask=rm, other=0.0)
            gz = tl.where(z >= 0, a, 0.0)  # torch.clamp(min=0) passes grad where input >= 0
            if REACTION_GRAD:
                tl.store(gz_b + rows, gz, mask=rm)
            gx = _mlp_backward(x0, gz * (dt * scale), nw_ptr, nb_ptr, gw_b, gb_b, LN, HN, PREC, DT)
            emask = rm[:, None] & (cols[None, :] >= 1) & (cols[None, :] <= D)
            ep = gemb_b + rows[:, None] * D + (cols[None, :] - 1)
            tl.store(ep, tl.load(ep, mask=emask, other=0.0) + gx, mask=emask)
            gc = tl.sum(tl.where(cols[None, :] == 0, gx, 0.0), axis=1)
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


def _pow2(n: int, lo: int = 16) -> int:
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
    return _pow2(max(max(w.shape) for w, _ in layers))


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


def _prec(dtype) -> str:
    """Exact fp32 products (no TF32): the rollout compounds errors over T steps."""
    return "ieee"


# Largest row blocks per dtype. fp64 tiles take twice the shared memory; with 64-wide MLPs the
# fp64 backward only fits the H100's 227 KiB of shared memory per CTA at these smaller blocks.
MAX_BLOCKS = {torch.float32: (64, 256), torch.float64: (16, 64)}


def block_sizes(N: int, R: int, dtype) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_R) for N metabolites, R reactions."""
    bn, br = MAX_BLOCKS[dtype]
    return min(_pow2(N), bn), min(_pow2(R), br)


# Test hook: when not None, every buffer the kernels must fully overwrite (outputs and scratch)
# is filled with this value (e.g. NaN) instead of left uninitialised, so a missed write shows up.
POISON: float | None = None


def _empty(*shape, dtype, device) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype, device=device)
    return out if POISON is None else out.fill_(POISON)


def rollout_forward(c0: torch.Tensor, emb: torch.Tensor, node_w: torch.Tensor,
                    node_b: torch.Tensor, plan: ReactionPlan, dt: float, n_steps: int,
                    node_scale: float) -> torch.Tensor:
    """Launch the fused forward: (B, N) -> trajectory (B, T, N); node_w/b are packed."""
    B, N = c0.shape
    dev, dtype = c0.device, c0.dtype
    traj = _empty(B, n_steps, N, dtype=dtype, device=dev)
    if n_steps == 0 or B == 0:
        return traj
    tab = _empty(B, N * plan.U, dtype=dtype, device=dev)
    v = _empty(B, plan.R, dtype=dtype, device=dev)
    params = torch.tensor([dt, node_scale], dtype=dtype, device=dev)
    BN, BR = block_sizes(plan.N, plan.R, dtype)
    rollout_fwd_kernel[(B,)](
        c0, emb, traj, params, node_w, node_b, plan.sub_w, plan.sub_b, plan.coeff, plan.gidx,
        plan.k, plan.ell_rxn, plan.ell_val, tab, v,
        N, plan.R, n_steps, plan.U, emb.shape[1], plan.ell_rxn.shape[1],
        M=plan.M, LN=node_w.shape[0], HN=node_w.shape[1], LS=plan.LS, HS=plan.HS,
        BLOCK_N=BN, BLOCK_R=BR, PREC=_prec(dtype), DT=_tl_dtype(dtype))
    return traj


def rollout_backward(c0, emb, traj, grad_traj, node_w, node_b, plan: ReactionPlan, dt: float,
                     node_scale: float, reaction_grad: bool):
    """Launch the fused BPTT: returns (grad c0, grad emb, grad packed W, grad packed b)."""
    B, T, N = traj.shape
    dev, dtype = c0.device, c0.dtype
    D = emb.shape[1]
    LN, HN = node_w.shape[0], node_w.shape[1]
    U, R, M = plan.U, plan.R, plan.M
    gc0 = _empty(B, N, dtype=dtype, device=dev)
    gemb = torch.zeros(B, N, D, dtype=dtype, device=dev)
    gw = torch.zeros(B, LN, HN, HN, dtype=dtype, device=dev)
    gb = torch.zeros(B, LN, HN, dtype=dtype, device=dev)
    if T == 0 or B == 0:
        gc0.copy_(grad_traj.new_zeros(B, N))
        return gc0, gemb.sum(0), gw.sum(0), gb.sum(0)
    tab = _empty(B, N * U, dtype=dtype, device=dev)
    dtab = _empty(B, N * U, dtype=dtype, device=dev)
    v = _empty(B, R, dtype=dtype, device=dev)
    gz = _empty(B, N, dtype=dtype, device=dev)
    gfac = _empty(B, R * M, dtype=dtype, device=dev)
    adj = torch.zeros(B, N, dtype=dtype, device=dev)
    params = torch.tensor([dt, node_scale], dtype=dtype, device=dev)
    BN, BR = block_sizes(plan.N, plan.R, dtype)
    rollout_bwd_kernel[(B,)](
        c0, emb, traj, grad_traj.contiguous(), params, node_w, node_b, plan.sub_w, plan.sub_b,
        plan.coeff, plan.gidx, plan.k, plan.ell_rxn, plan.ell_val, plan.st_idx, plan.st_val,
        plan.use, tab, dtab, v, gz, gfac, adj, gc0, gemb, gw, gb,
        N, R, T, U, D, plan.ell_rxn.shape[1], plan.st_idx.shape[1], plan.use.shape[1],
        M=M, LN=LN, HN=HN, LS=plan.LS, HS=plan.HS, BLOCK_N=BN, BLOCK_R=BR,
        REACTION_GRAD=bool(reaction_grad), PREC=_prec(dtype), DT=_tl_dtype(dtype))
    return gc0, gemb.sum(0), gw.sum(0), gb.sum(0)


def _tl_dtype(dtype):
    if dtype == torch.float32:
        return tl.float32
    if dtype == torch.float64:
        return tl.float64
    raise TypeError(f"fused rollout supports float32/float64, got {dtype}")
