"""C++ kernels for the CPU training step, built for the machine on first use (PyTorch's ops otherwise)."""


def build_all() -> None:
    """Builds every kernel not yet built for this machine, all at once (one compiler each): a first
    CPU run would otherwise wait for them one after the other, most of each build being the same
    PyTorch headers (about 30 s a kernel)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import bn_act, depthwise

    kernels = (bn_act.kernel, depthwise.kernel)
    with ThreadPoolExecutor(len(kernels)) as pool:
        for built in [pool.submit(k) for k in kernels]:
            built.result()
