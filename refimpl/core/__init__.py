"""The bottom layer: the tape (:mod:`.tape`), function transformations over it
(:mod:`.autodiff`), the named random streams (:mod:`.rng`), the one module that imports numba
(:mod:`._jit`) and SGD (:mod:`.optim`). Nothing here imports anything above it."""
