"""The probe agent of a runner's smoke check after an upgrade (``corral.runner.upgrade``).

It imports what a run on a runner needs (the executor, the runner, the store, the agent
commands) and says so: ``corral probe ok <version>``. Exit 0 when all of it loads.
"""

from __future__ import annotations

import sys


def main() -> int:
    import corral
    import corral.runner.agent
    import corral.scheduler.executor
    import corral.store

    print(f"corral probe ok {corral.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
