"""The shipped tasks, one module each: its ``TaskSpec`` (``register_task``: instruction
paraphrases, the objects the OOD splits move and recolour) and its scripted expert
(``register_expert``). Every module in this package is imported here, so a new task is one new
module (docs/adding_a_task.md); nothing else lists the tasks.

Imports numpy and scipy, never ManiSkill (config validation and the CLI stay fast).
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
