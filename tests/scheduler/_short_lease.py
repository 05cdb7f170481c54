"""`corral ARGS` with short scheduler leases, for the self-fencing tests.

Usage: python tests/scheduler/_short_lease.py LEASE RENEW ARGS... (e.g. start --headless).
Only the lease timings differ from a real `corral start`: the default SchedulerOptions
the command builds get ``lease_seconds``, ``renew_every`` and a quick ``recover_every``.
"""

from __future__ import annotations

import functools
import sys

from corral.cli import main
from corral.cli.commands import fleet
from corral.scheduler.service import SchedulerOptions

if __name__ == "__main__":
    lease, renew = float(sys.argv[1]), float(sys.argv[2])
    fleet.SchedulerOptions = functools.partial(  # type: ignore[attr-defined,assignment]
        SchedulerOptions, lease_seconds=lease, renew_every=renew, recover_every=0.5
    )
    sys.argv = ["corral", *sys.argv[3:]]
    main()
