"""GPU benchmarks (installed as lowbit.benchmarks; run with `python -m lowbit bench ...`)."""
