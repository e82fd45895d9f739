"""Probing tasks: a dataset turned into rows of (image, prompt, labels, split).

The extraction stage calls `build_task(config.data, config.task, config.seed)`
and writes the returned `TaskTable` to the workdir (WORKSPACE.md).
"""

from probing.tasks.build import build_task, open_dataset
from probing.tasks.config import default_data_config, default_task_config
from probing.tasks.table import TaskTable

__all__ = ["TaskTable", "build_task", "default_data_config", "default_task_config", "open_dataset"]
