"""The MLP student: :mod:`.configuration_mlp_student` (its ``policy`` section, imported with
``vlarl.policies``) and :mod:`.modeling_mlp_student` (the model, imported on first use)."""

from vlarl.policies.mlp_student.configuration_mlp_student import MLPStudentConfig

__all__ = ["MLPStudentConfig"]
