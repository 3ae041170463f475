"""Ahead-of-time compilation of the rollout kernels for a GPU target, without a GPU.

Why: CI machines have no GPU; compiling to PTX and a cubin for sm_90 still proves the kernels
lower through the real (non-interpreted) Triton pipeline. Must run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget

from kernels import triton_rollout as tr

_PTR = {"float32": "*fp32", "float64": "*fp64"}


def _signature(kernel, dtype: str, int_ptrs: set[str], constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in int_ptrs else _PTR[dtype]
        else:
            sig[name] = "i32"
    return sig


# Opt-in shared memory per CTA on sm_90 (H100): a kernel needing more cannot launch there.
H100_MAX_SHARED = 232448


def compile_kernels(arch: int = 90, dtype: str = "float32", *, hidden: int = 64,
                    hidden_sub: int | None = None, layers: int = 3, substrate_slots: int = 2,
                    n_metabolites: int = 100, n_reactions: int = 256, reaction_grad: bool = True,
                    kernels: tuple[str, ...] = ("forward", "backward"),
                    tuning: tr.Tuning | None = None) -> dict:
    """{'forward': CompiledKernel, 'backward': CompiledKernel} for cuda sm_<arch>.

    Block sizes, precision and warps are those the launcher would use with `tuning` (None: the
    dtype's default, kernels.triton_rollout.DEFAULT_TUNING); hidden_sub defaults to hidden.
    """
    target = GPUTarget("cuda", arch, 32)
    tl_dtype = tr.tl.float32 if dtype == "float32" else tr.tl.float64
    torch_dtype = getattr(tr.torch, dtype)
    tuning = tr.resolve_tuning(torch_dtype, tuning)
    block_n, block_r = tr.block_sizes(n_metabolites, n_reactions, torch_dtype, tuning)
    hidden, hidden_sub = tr.pow2_width(hidden), tr.pow2_width(hidden_sub or hidden)
    common = dict(M=substrate_slots, LN=layers, HN=hidden,
                  BLOCK_N=block_n, BLOCK_R=block_r, PREC=tuning.prec, DT=tl_dtype)
    ints = {"gidx_ptr", "ell_rxn_ptr", "st_idx_ptr", "use_ptr"}
    options = {"num_warps": tuning.num_warps}
    out = {}
    for name, kernel, extra in (("forward", tr.rollout_fwd_kernel,
                                 {"LS": layers, "HS": hidden_sub, "SAVE": True,
                                  "SAVE_JVP": reaction_grad}),
                                ("backward", tr.rollout_bwd_kernel,
                                 {"REACTION_GRAD": reaction_grad})):
        if name not in kernels:
            continue
        constexprs = {**common, **extra}
        src = triton.compiler.ASTSource(fn=kernel, signature=_signature(kernel, dtype, ints,
                                                                        constexprs),
                                        constexprs=constexprs)
        out[name] = triton.compile(src, target=target, options=options)
    return out
