"""The CPU backend: Numba kernels, one module per kernel family; ``fastae.cpu.backend`` gathers the
functions every backend provides (fastae/backends.md)."""
