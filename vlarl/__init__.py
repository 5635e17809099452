__version__ = "0.1.0"

# Each policy's ``policy`` section class registers itself on import (no torch is imported), so
# ``load_config`` knows every policy's keys however vlarl is entered.
import vlarl.policies  # noqa: F401
