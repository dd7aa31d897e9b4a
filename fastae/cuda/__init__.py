"""CuPy launchers of the CUDA kernels in ``kernels/*.cu``, one module per kernel
family, mirroring ``fastae.cpu``. Importing them needs neither CuPy nor a GPU;
CuPy is imported when a kernel is first launched."""
