"""The solver backends: a name -> its class (:class:`rawks_triton.solve.protocols.Backend`).

* ``"scipy"`` (:mod:`.scipy`): sparse LU per image in float64, the exact reference;
* ``"torch"`` (:mod:`.torch`): batched certified PCG in plain torch, CPU or CUDA;
* ``"triton"`` (:mod:`.triton`): the same PCG as Triton kernels, CUDA (or the interpreter).

Which one ``"auto"`` means is :mod:`rawks_triton.solve.choose`.
"""

from __future__ import annotations

from ..solve.choose import BACKENDS, triton_available

__all__ = ["BACKENDS", "get_backend", "triton_available"]


def get_backend(name: str):
    if name == "scipy":
        from .scipy import DirectBackend

        return DirectBackend
    if name == "torch":
        from .torch import TorchBackend

        return TorchBackend
    if name == "triton":
        from .triton import TritonBackend

        return TritonBackend
    raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {name!r}")
