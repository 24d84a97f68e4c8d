"""C++ kernels for the CPU training step, built for the machine on first use (PyTorch's ops otherwise)."""


def build_all() -> None:
    """Builds every kernel not yet built for this machine, all at once (one compiler each): a first
    CPU run would otherwise wait for them one after the other, much of each build being the same
    ATen headers (about 15 s for the two on 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import bn_act, depthwise

    kernels = (bn_act.kernel, depthwise.kernel)
    with ThreadPoolExecutor(len(kernels)) as pool:
        for built in [pool.submit(k) for k in kernels]:
            built.result()
