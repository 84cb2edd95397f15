"""Time to build symbolic gradients (no evaluation): the formula layer's own speed.

    python benchmarks/symbolic_grad.py [--nodes 1000] [--seed 0] [--check 0.1]

For each case, builds the gradient formula of a Sum reduction with respect to every variable
(``formula.reduction_grads.sum_like_gradient``: the symbolic gradient and its simplification,
what ``torch.autograd`` asks for on the backward pass) and the second-order gradient of the
first variable; prints the number of nodes of the formula and the wall times (slowest single
first-order gradient, second-order one), as a markdown table.  With ``--check T``, exits with
status 1 if one first-order gradient takes more than T seconds to build.

Cases: pykeops' ``keops_tensordot`` test with a permutation (dimensions 96 and 288: about
50 s before nodes were hash-consed), a Gaussian kernel, random formulas of about ``--nodes``
nodes (wide and deep DAGs) and a chain of ``--nodes`` nested ops.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from polykeops.formula import algebra as A
from polykeops.formula import composite as C
from polykeops.formula.nodes import CAT_I, CAT_J, CAT_P, Var, walk
from polykeops.formula.reduction_grads import sum_like_gradient
from polykeops.formula.spec import ReductionSpec

_UNARY = ("Exp", "Sin", "Cos", "Tanh", "Abs", "ReLU", "Square", "Atan")
_BINARY = (A.add, A.sub, A.mul)


def tensordot_case():
    x, y = Var(0, 96, CAT_I), Var(1, 288, CAT_J)
    f = C.tensordot(x, y, (2, 3, 2, 2, 4), (2, 4, 2, 3, 2, 3), (4, 0, 2), (1, 4, 2), (4, 3, 2, 0, 1))
    return f, (x, y)


def gaussian_case():
    x, y, b, s = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 2, CAT_J), Var(3, 1, CAT_P)
    f = A.mul(A.node("Exp", A.neg(A.mul(s, C.sqdist(x, y)))), b)
    return f, (x, y, b, s)


def random_case(nodes: int, seed: int, deep: bool):
    """About ``nodes`` distinct nodes; ``deep``: each op takes the newest node (long chains)."""
    rnd = random.Random(seed)
    x, y, p = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 3, CAT_P)
    pool = [x, y, p]
    f = x
    while len({n for n in walk(f)}) < nodes:
        a = pool[-1] if deep else rnd.choice(pool)
        if rnd.random() < 0.4:
            out = A.node(rnd.choice(_UNARY), a)
        else:
            out = rnd.choice(_BINARY)(a, rnd.choice(pool))
        if rnd.random() < 0.2:  # keep values tame (no exp of exp of exp...)
            out = A.node("Sin", out)
        pool.append(out)
        f = A.add(f, out) if not deep else out
    return A.vsum(f), (x, y, p)


def chain_case(nodes: int):
    x, y = Var(0, 1, CAT_I), Var(1, 1, CAT_J)
    f = A.sub(x, y)
    for k in range(nodes):
        f = A.node(("Sin", "Cos", "Tanh")[k % 3], f)
    return f, (x, y)


def build_gradients(f, variables):
    """Seconds to build each gradient (w.r.t. every variable, then a second-order one) and the
    number of nodes of the formula differentiated the second time."""
    spec = ReductionSpec(reduction="Sum", formulas=(f,), variables=tuple(variables), axis=1)
    times = []
    for p in range(len(variables)):
        t0 = time.perf_counter()
        plan = sum_like_gradient(spec, p)
        times.append(time.perf_counter() - t0)
    # second order: a gradient of the formula of the first gradient (itself a Sum reduction)
    plan = sum_like_gradient(spec, 0)
    second = plan.spec if plan.spec.axis == 1 else plan.spec.with_(axis=1)
    t0 = time.perf_counter()
    sum_like_gradient(second, 0)
    times.append(time.perf_counter() - t0)
    return times, len(list(walk(second.formulas[0])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=float, default=None, help="fail above this many seconds")
    args = parser.parse_args()
    cases = {
        "keops_tensordot 96 x 288, permuted": tensordot_case(),
        "Gaussian kernel": gaussian_case(),
        f"random DAG (~{args.nodes} nodes)": random_case(args.nodes, args.seed, deep=False),
        f"random deep DAG (~{args.nodes} nodes)": random_case(args.nodes, args.seed + 1, deep=True),
        f"chain of {args.nodes} ops": chain_case(args.nodes),
    }
    print("| case | nodes | first-order gradients | slowest (s) | second order (s), its formula's nodes |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for name, (f, variables) in cases.items():
        times, second_nodes = build_gradients(f, variables)
        first = times[:-1]
        worst = max(worst, max(first))
        print(f"| {name} | {len(list(walk(f)))} | {len(first)} | {max(first):.4f} | "
              f"{times[-1]:.4f}, {second_nodes} |")
    if args.check is not None and worst > args.check:
        print(f"slowest case {worst:.3f} s > {args.check} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
