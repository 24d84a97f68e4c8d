import platform
import resource

import pytest
import torch

from mobilenets.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_steps_blocks_are_reused_not_faulted_in_again():
    # glibc maps every block over 32 MB afresh and unmaps it on free: without the setting each
    # "step" below faults in all of its 188 MB again (48,000 pages), every time.
    assert keep_freed_memory()

    def step() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        outputs = [torch.ones(n * 2**20) for n in (9, 12, 16, 10)]  # 36 to 64 MB, alive together
        del outputs
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults = [step() for _ in range(8)]  # the heap grows in the first steps to hold them
    assert max(faults[-4:]) < 1000, faults
