"""C++ kernels for the CPU training step, built for the machine on first use (PyTorch's ops otherwise)."""
