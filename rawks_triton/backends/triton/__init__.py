"""The ``"triton"`` backend: launchers for the kernels in :mod:`rawks_triton.kernels`.

* :mod:`.operator`: the framed stencil (:class:`TritonOperator`) and the launch configurations;
* :mod:`.pcg`: the batched CG (:class:`TritonPCG`), two launches per iteration;
* :mod:`.multigrid`: the multigrid cycle with Triton primitives;
* :mod:`.specs`: every kernel, dtype and constexpr a launcher can choose (``python -m rawks_triton.aot``);
* :mod:`.backend`: :class:`TritonBackend`, the [S, H, W] interface of the rest of the library.
"""

from .backend import TritonBackend

__all__ = ["TritonBackend"]
