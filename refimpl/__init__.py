"""fedmef-refimpl: the reference implementation of FedMef (memory-efficient federated dynamic
pruning, CVPR 2024). See SPEC.md for the rules every module names in its docstrings."""

from . import functional
from .core.autodiff import grad, value_and_grad, vjp
from .core.optim import SGD
from .core.tape import Tape, Var

__all__ = ["functional", "vjp", "grad", "value_and_grad", "Tape", "Var", "SGD"]
__version__ = "0.1.0"
