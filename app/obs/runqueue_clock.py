"""The clock of the loop-block probe (app.obs.metrics.LoopBlockProbe), run as its own small process.

Every INTERVAL seconds it writes `<CLOCK_MONOTONIC seconds> <run-queue wait ns>` of the server's loop thread
(Linux /proc/PID/task/TID/schedstat) to its standard output, and exits when the server is gone. A process,
not a thread: a thread needs the GIL to read the clock, and the loop holds the GIL even while the kernel keeps
it off the CPU, so the window would open late by exactly the time to be told apart. Standard library only, run
as a script (`python -I -S runqueue_clock.py PID TID INTERVAL`): it imports nothing of the service.
"""

import os
import sys
import time


def main() -> None:
    pid, tid, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    stat = f"/proc/{pid}/task/{tid}/schedstat"
    planned = time.monotonic() + interval
    while True:
        time.sleep(max(0.0, planned - time.monotonic()))
        planned = max(planned + interval, time.monotonic())
        now = time.monotonic()
        try:
            with open(stat, "rb") as fields:
                waited = int(fields.read().split()[1])
            os.write(1, f"{now!r} {waited}\n".encode())
        except (OSError, IndexError, ValueError):  # the server is gone (or closed the pipe)
            return


if __name__ == "__main__":
    main()
