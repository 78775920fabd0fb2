"""tickprop's numeric core: numpy (and scipy's expit and BLAS), no I/O."""

from model.errors import FormatError, ModelError, RefusedUpdate
from model.gradcheck import gradient_check, numerical_gradients
from model.network import Network

__all__ = [
    "FormatError",
    "ModelError",
    "Network",
    "RefusedUpdate",
    "gradient_check",
    "numerical_gradients",
]
