"""A thread's CPU priority raised above its process's, where the process may.

On Linux nice is per thread: setpriority() on a thread's id moves that thread alone. Lowering
nice needs CAP_SYS_NICE (root has it outside containers), or an RLIMIT_NICE of at least
20 - nice (`ulimit -e`, systemd's LimitNICE=).
"""

import os


def raise_priority(thread_id: int, steps: int) -> tuple[int, int]:
    """Lower the thread's nice value by `steps` (down to -20) if the process may;
    (the nice value wanted, the one it runs at)."""
    now = os.getpriority(os.PRIO_PROCESS, thread_id)
    wanted = max(now - steps, -20)
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, wanted)
    except PermissionError:
        return wanted, now
    return wanted, wanted
