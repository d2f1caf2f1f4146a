"""Public name of the data tools: everything here is :mod:`refimpl.data` (kept so that
``import data_tools; data_tools.load_dataset(...)`` works as documented). It imports downward
only."""

from refimpl.data import *  # noqa: F403
from refimpl.data import __all__  # noqa: F401
