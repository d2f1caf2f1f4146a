"""The federated engine (SPEC §6-§9): clients, server, methods, configuration, runs.

Entry points: :func:`load_config` (typed, validated configuration), :func:`run` (a run into a
directory, resumable), and the ``fedmef run`` / ``fedmef compare`` commands (:mod:`.cli`).
"""

from .config import Config, ConfigError, load_config
from .runner import RunDirError, run

__all__ = ["Config", "ConfigError", "load_config", "run", "RunDirError"]
