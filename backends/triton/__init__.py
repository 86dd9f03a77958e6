"""Portable Triton kernels and their launchers, one file per op.

No inline asm and nothing vendor-specific (no `tl.extra.cuda`): every Triton target compiles
them, the interpreter (TRITON_INTERPRET=1) runs them on CPU tensors, and they give the bits of
docs/SPEC.md. This package is not a backend by itself: device backends (`lowbit.backends.cuda`,
`xpu`) declare where the kernels run, with capability records, and may pass vendor
specialisations in through the kernels' constexpr hooks.
"""
