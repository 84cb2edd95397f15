"""polykeops conformance suite: certifies that a backend computes the right thing.

Run it with ``pytest conformance --backend NAME`` (a registered backend) or
``pytest conformance --backend pkg.module:factory`` (any zero-argument factory);
see ``conformance/README.md``.

Modules:

* :mod:`conformance.strategies` -- hypothesis strategies: random formula trees drawn
  from the op table, sizes, batch shapes, dtypes and data recipes (:class:`Case`);
* :mod:`conformance.oracle`     -- the dense torch oracle (values, gradients) and the
  tolerance policy;
* :mod:`conformance.checks`     -- comparisons that explain their failures;
* :mod:`conformance.repro`      -- runnable reproduction snippets;
* :mod:`conformance.runner`     -- driving a backend through the public API;
* :mod:`conformance.session`    -- options and the backends under test;
* :mod:`conformance.compile_hooks` -- compile-only checks of generated code (CUDA without a GPU);
* :mod:`conformance.meta`       -- deliberately broken backends and the meta-tests that must catch them.
"""
