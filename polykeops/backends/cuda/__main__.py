"""Developer tool: render and compile one reduction with NVRTC, no GPU needed.

    python -m polykeops.backends.cuda compile "Exp(-SqDist(x, y)) * b" "x = Vi(3)" "y = Vj(3)" "b = Vj(1)" \\
        --reduction Sum --axis 1 --dtype float32 --arch sm_90

prints, per kernel, the registers, the static shared memory and the local memory
(stack frame; non-zero when registers spill) read from the cubin's ELF sections
(``.text.<kernel>`` section info, ``.nv.shared.<kernel>`` and the ``.nv.info``
attributes -- no cuobjdump, no GPU), plus the spill counts ``ptxas -v`` reports
when the kernel was compiled in this run.  ``--source`` prints the generated
CUDA C; on a compile error the NVRTC log is printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
import time


def _spec(args):
    from ...formula.parser import parse_formula, parse_reduction_formula
    from ...formula.spec import ReductionSpec

    formula, variables = parse_reduction_formula(args.formula, args.aliases)
    formulas = (formula,)
    if args.weight:
        from ...formula.parser import parse_aliases

        weight = parse_formula(args.weight, parse_aliases(args.aliases))
        formulas = (formula, weight)
        from ...formula.nodes import variables as vars_of

        by_index = {v.index: v for v in (*variables, *vars_of(weight))}
        variables = tuple(by_index[k] for k in sorted(by_index))
    spec = ReductionSpec(
        args.reduction, formulas, variables, axis=args.axis, k=args.k, dtype=args.dtype,
        dtype_acc=args.dtype_acc, sum_scheme=args.sum_scheme, precision=args.precision,
    )
    return spec.canonical()


def compile_command(args) -> int:
    from ...errors import PolyKeopsError
    from . import build, nvrtc
    from .kernel_source import generate

    try:
        spec = _spec(args)
        ks = generate(spec, n_batch_dims=args.batch_dims, idx64=args.idx64, ranges=args.ranges,
                      arch=args.arch)
    except PolyKeopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.source:
        print(ks.source)
    kind = "ptx" if args.ptx else "cubin"
    t0 = time.perf_counter()
    try:
        built = build.build(ks.source, args.arch, kind, use_cache=not args.no_cache)
    except nvrtc.CompileError as exc:
        print(f"NVRTC failed to compile {spec}:\n{exc.log}", file=sys.stderr)
        return 1
    except PolyKeopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    major, minor = nvrtc.version()
    origin = "disk cache" if built.cached else f"compiled in {elapsed:.2f} s"
    print(f"{spec}")
    print(f"NVRTC {major}.{minor}, {built.arch} {kind}, {len(built.binary)} bytes ({origin}); "
          f"tile_j = {ks.tile_j}, block = {ks.block}, {len(ks.slices)} output slice(s)"
          + (f", tensor cores ({ks.tensor_cores})" if ks.tensor_cores else ""))
    if kind == "ptx":
        return 0
    res = built.resources()
    log = nvrtc.parse_ptxas_log(built.log)
    print(f"{'kernel':<12} {'registers':>9} {'shared B':>9} {'local B':>8}  spills (ptxas)")
    for name in ks.kernel_names:
        r = res[name]
        extra = ""
        if name in log:
            extra = f"{log[name].get('spill_stores', 0)} B stores, {log[name].get('spill_loads', 0)} B loads"
        print(f"{name:<12} {r.registers:>9} {r.shared_bytes:>9} {r.local_bytes:>8}  {extra}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polykeops.backends.cuda",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="render and compile one reduction; print its resource use")
    c.add_argument("formula")
    c.add_argument("aliases", nargs="*", help='variables, e.g. "x = Vi(3)" "y = Vj(3)"')
    c.add_argument("--reduction", default="Sum")
    c.add_argument("--weight", default=None, help="second formula of weighted reductions")
    c.add_argument("--axis", type=int, default=1, choices=(0, 1))
    c.add_argument("--k", type=int, default=None, help="K of the KMin reductions")
    c.add_argument("--dtype", default="float32", choices=("float16", "bfloat16", "float32", "float64"))
    c.add_argument("--precision", default="ieee", choices=("ieee", "tf32"),
                   help="tf32: float32 inner products on tensor cores (sm_80+)")
    c.add_argument("--dtype-acc", default="auto")
    c.add_argument("--sum-scheme", default="block_sum")
    c.add_argument("--arch", default="sm_90")
    c.add_argument("--batch-dims", type=int, default=0)
    c.add_argument("--idx64", action="store_true", help="64-bit j indices in registers")
    c.add_argument("--ranges", action="store_true", help="the block-sparse (ranges) kernels")
    c.add_argument("--ptx", action="store_true", help="compile to PTX instead of a cubin")
    c.add_argument("--source", action="store_true", help="print the generated CUDA C")
    c.add_argument("--no-cache", action="store_true", help="do not use the disk cache")
    args = parser.parse_args(_formulas_as_positionals(sys.argv[1:] if argv is None else list(argv)))
    return compile_command(args)


def _formulas_as_positionals(argv: list) -> list:
    """``-SqDist(x,y)`` is a formula, not an option: arguments that start with one ``-`` and are
    not ``-h`` get a leading space (argparse then takes them as positionals; the formula parser
    and ``int()`` ignore it)."""
    return [" " + a if isinstance(a, str) and a.startswith("-") and not a.startswith("--") and a != "-h"
            else a for a in argv]


if __name__ == "__main__":
    sys.exit(main())
