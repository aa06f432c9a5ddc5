"""Text environments: the TextEnv contract, the EnvSpec record of an environment, their conformance checkers, and
the built-in household game. The specs of every shipped environment are listed in ``sdar.envs.registry``."""

from sdar.envs.base import EnvCrashed, EnvError, EnvFactory, EnvUnavailable, TaskSource, TaskSpec, TextEnv
from sdar.envs.checker import check_env, check_env_spec
from sdar.envs.spec import EnvSpec
from sdar.envs.toy import (
    DEFAULT_TASK_TYPES,
    INVALID_FEEDBACK,
    TASK_TYPES,
    ToyTask,
    ToyTaskSource,
    ToyTextEnv,
    build_task,
    expert_action,
)

__all__ = [
    "DEFAULT_TASK_TYPES",
    "INVALID_FEEDBACK",
    "TASK_TYPES",
    "EnvCrashed",
    "EnvError",
    "EnvFactory",
    "EnvSpec",
    "EnvUnavailable",
    "TaskSource",
    "TaskSpec",
    "TextEnv",
    "ToyTask",
    "ToyTaskSource",
    "ToyTextEnv",
    "build_task",
    "check_env",
    "check_env_spec",
    "expert_action",
]
