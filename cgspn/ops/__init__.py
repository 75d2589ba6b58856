"""Fast backends of the C-GSPN propagation operator.

Each module exposes ``load_backend(name) -> propagate`` for :mod:`cgspn.propagation`:

- :mod:`cgspn.ops.triton`: the Triton kernels (backend ``"triton"``), ops ``cgspn::propagate_fwd/bwd``.
- :mod:`cgspn.ops.hub`: the CUDA kernel of ``kernels_src/`` loaded through the ``kernels`` package,
  from a local build (backend ``"cuda"``) or from the Hub (backend ``"hub"``), and
  :func:`cgspn.ops.hub.kernelize_model`.

Nothing here is imported by ``cgspn.propagation`` until a backend is asked for.
"""
