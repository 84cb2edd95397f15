"""polykeops conformance suite: certifies that a backend computes the right thing.

Shipped inside the package as ``polykeops.conformance`` (its sources are the
repository's ``conformance/`` folder).  Run it with ``python -m polykeops.conformance
--backend NAME`` (a registered backend) or ``--backend pkg.module:factory`` (any
zero-argument factory); in a checkout, ``python -m pytest conformance --backend NAME``;
see the suite's ``README.md``.

Modules:

* :mod:`.strategies`    -- hypothesis strategies: random formula trees drawn from the op
  table, sizes, batch shapes, dtypes and data recipes (:class:`Case`);
* :mod:`.dense_ops`     -- one independent dense definition per op, named like the op;
* :mod:`.dense_values`  -- the oracle's values: formulas on the dense grid, reduced with torch;
* :mod:`.ranges_mask`   -- block-sparse ranges as a mask of that grid;
* :mod:`.tolerances`    -- the tolerance policy and the expected outputs of a case;
* :mod:`.gradients`     -- the oracle's gradients (torch.autograd) and their tolerances;
* :mod:`.checks`        -- comparisons that explain their failures;
* :mod:`.repro`         -- runnable reproduction snippets;
* :mod:`.runner`        -- driving a backend through the public API;
* :mod:`.session`       -- options and the backends under test;
* :mod:`.plugin`        -- the pytest plugin (options, parametrisation, skips and xfails files);
* :mod:`.compile_hooks` -- compile-only checks of generated code (CUDA without a GPU);
* :mod:`.meta`          -- deliberately broken backends and the meta-tests that must catch them.
"""
