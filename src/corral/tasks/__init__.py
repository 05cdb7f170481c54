"""corral.tasks: the task board's model, file format and git-native backend.

Nothing here reads the store: the board's state lives in the store (corral.store),
and this package holds what the store, the CLI, the in-run commands and the git
backend share.
"""

from corral.tasks._model import (
    CLAIMABLE,
    FINAL,
    Task,
    TaskError,
    TaskEvent,
    TaskSpec,
    TaskStatus,
    check_id,
)

__all__ = [
    "CLAIMABLE",
    "FINAL",
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskSpec",
    "TaskStatus",
    "check_id",
]
