"""A thread's CPU priority moved relative to its process's, where the process may.

On Linux nice is per thread: setpriority() on a thread's id moves that thread alone. Lowering
nice needs CAP_SYS_NICE (root has it outside containers), or an RLIMIT_NICE of at least
20 - nice (`ulimit -e`, systemd's LimitNICE=).
"""

import os


def renice(thread_id: int, increment: int) -> tuple[int, int]:
    """Add `increment` to the thread's nice value (as `nice -n` does, within -20..19) if the
    process may; (the nice value wanted, the one it runs at)."""
    now = os.getpriority(os.PRIO_PROCESS, thread_id)
    wanted = min(max(now + increment, -20), 19)
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, wanted)
    except PermissionError:
        return wanted, now
    return wanted, wanted
