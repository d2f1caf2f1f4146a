"""Public name of the model zoo: everything here is :mod:`refimpl.models` (kept so that
``import models; models.build(...)`` works as documented). It imports downward only."""

from refimpl.models import *  # noqa: F403
from refimpl.models import __all__  # noqa: F401
