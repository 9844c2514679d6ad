"""Task registry: ``arith`` (embedded default), ``science``, ``tooluse`` (DESIGN §5).

Each task class carries its ``name`` and ``version`` and provides ``verify``,
``extract_answer`` and ``load_splits(options, seed)``. Importing this package is cheap:
``datasets`` is imported only when a file-backed split is loaded.

    >>> task = get_task("arith")
    >>> task.verify("<answer>B</answer>", "B")
    True
"""

from __future__ import annotations

from caopd.tasks.arith import ArithTask
from caopd.tasks.base import TaskExample, Task, TaskDataError
from caopd.tasks.science import ScienceTask
from caopd.tasks.tooluse import ToolUseTask

TASKS: dict[str, type] = {
    ArithTask.name: ArithTask,
    ScienceTask.name: ScienceTask,
    ToolUseTask.name: ToolUseTask,
}


def get_task(name: str) -> ArithTask | ScienceTask | ToolUseTask:
    """A new instance of the task registered as ``name``; KeyError listing the known names."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "TaskExample", "Task", "TaskDataError", "get_task"]
