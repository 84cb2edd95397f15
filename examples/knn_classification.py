"""K-nearest-neighbour classification with ``argKmin`` on a symbolic distance matrix.

A test point x_i gets the label most frequent among the labels of its K nearest training
points y_j:

    nn_i  = argKmin_j |x_i - y_j|^2          (the K indices, closest first)
    label = majority vote of labels[nn_i]

The (M_test, N_train) distance matrix is symbolic: ``LazyTensor(x_test[:, None, :])`` is an
i-variable, ``LazyTensor(x_train[None, :, :])`` a j-variable, and ``D_ij.argKmin(K, dim=1)``
keeps the K smallest entries of each row in one fused, tiled pass, returning an
(M_test, K) int64 tensor. ``Kmin_argKmin`` would return the distances too.

The data are synthetic: points in the unit square with a class (one of C) given by a wavy
function of the position, and a few training labels flipped at random (label noise).

The script checks itself against a dense torch ``topk`` on a subset of the test points
(the K distances, and the votes where the neighbour sets coincide) and checks that the
accuracy is far above chance, raising AssertionError otherwise.

    python examples/knn_classification.py           # 200,000 training points, 20,000 tests
    python examples/knn_classification.py --small   # a quick run
"""

from __future__ import annotations

import argparse
import time

import torch

from polykeops.torch import LazyTensor


def true_class(x, n_classes):
    """The class of points of the unit square: level sets of a wavy function, C bands."""
    f = torch.sin(7.0 * x[:, 0]) + torch.cos(5.0 * x[:, 1]) + 2.0 * x[:, 0] * x[:, 1]
    # bands of f between its range's quantiles (computed on a fixed grid for all calls)
    t = torch.linspace(0, 1, 201)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2)
    fg = torch.sin(7.0 * grid[:, 0]) + torch.cos(5.0 * grid[:, 1]) + 2.0 * grid[:, 0] * grid[:, 1]
    edges = torch.quantile(fg, torch.linspace(0, 1, n_classes + 1)[1:-1])
    return torch.bucketize(f, edges)


def make_data(n_train, n_test, n_classes, noise, generator):
    x_train = torch.rand(n_train, 2, generator=generator)
    x_test = torch.rand(n_test, 2, generator=generator)
    y_train = true_class(x_train, n_classes)
    flip = torch.rand(n_train, generator=generator) < noise  # label noise on the training set
    y_train[flip] = torch.randint(n_classes, (int(flip.sum()),), generator=generator)
    return x_train, y_train, x_test, true_class(x_test, n_classes)


def knn_indices(x_test, x_train, k):
    """(M, K) indices of the K nearest training points of every test point, closest first."""
    x_i = LazyTensor(x_test[:, None, :])  # (M, 1, D) i-variable
    y_j = LazyTensor(x_train[None, :, :])  # (1, N, D) j-variable
    D_ij = ((x_i - y_j) ** 2).sum(-1)  # symbolic (M, N) squared distances
    return D_ij.argKmin(k, dim=1)  # (M, K) int64


def majority_vote(neighbour_labels, n_classes):
    """Most frequent label of each row (ties: the smallest label)."""
    m = neighbour_labels.shape[0]
    votes = torch.zeros(m, n_classes, dtype=torch.int64)
    votes.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels))
    return votes.argmax(dim=1)


def check_against_dense(x_test, x_train, y_train, nn, pred, k, n_classes, n_check=400):
    """Dense reference on the first n_check test points: the K smallest distances must agree."""
    y = x_train.double()
    d_ref, nn_ref, d_lazy = [], [], []
    for xs, nn_s in zip(x_test[:n_check].double().split(50), nn[:n_check].split(50)):
        d2 = ((xs[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # (50, N) dense, in float64
        d, i = d2.topk(k, dim=1, largest=False)  # sorted, closest first
        d_ref.append(d)
        nn_ref.append(i)
        d_lazy.append(d2.gather(1, nn_s))  # the distances of the neighbours polykeops chose
    d_ref, nn_ref, d_lazy = torch.cat(d_ref), torch.cat(nn_ref), torch.cat(d_lazy)
    # float32 rounding may swap near-ties, changing a distance by a few float32 ulps at most
    err = ((d_lazy - d_ref).abs() / (d_ref + 1e-12)).max().item()
    assert err <= 1e-5, f"kNN: the K nearest distances differ from torch.topk's (relative error {err:.3g})"
    assert (d_lazy[:, 1:] >= d_lazy[:, :-1] - 1e-7).all(), "kNN: argKmin is not sorted closest first"
    same = (nn[:n_check].sort(1).values == nn_ref.sort(1).values).all(1)
    pred_ref = majority_vote(y_train[nn_ref], n_classes)
    assert (pred[:n_check][same] == pred_ref[same]).all(), "kNN: majority votes differ from the reference"
    return same.double().mean().item()


def main(n_train=200_000, n_test=20_000, k=10, n_classes=4, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = make_data(n_train, n_test, n_classes, noise, g)
    print(
        f"kNN classification: {n_train:,} training points, {n_test:,} test points, K = {k}, "
        f"{n_classes} classes, {100 * noise:.0f}% label noise"
    )

    t0 = time.perf_counter()
    nn = knn_indices(x_test, x_train, k)
    t1 = time.perf_counter()
    pred = majority_vote(y_train[nn], n_classes)
    t2 = time.perf_counter()
    accuracy = (pred == y_test).double().mean().item()

    same = check_against_dense(x_test, x_train, y_train, nn, pred, k, n_classes)
    # a single nearest neighbour copies the noisy labels; the vote of K of them filters them out
    acc_1nn = (y_train[nn[:, 0]] == y_test).double().mean().item()
    chance = 1.0 / n_classes
    assert accuracy > 0.85, f"kNN accuracy {accuracy:.3f} is too low (chance is {chance:.2f})"
    assert accuracy > acc_1nn, f"the K-vote ({accuracy:.3f}) should beat 1-NN ({acc_1nn:.3f}) on noisy labels"

    print(f"  argKmin (LazyTensor): {1e3 * (t1 - t0):8.1f} ms   ({n_test * n_train / (t1 - t0):.2e} pairs/s)")
    print(f"  majority vote:        {1e3 * (t2 - t1):8.1f} ms")
    print(
        f"  test accuracy: {100 * accuracy:.2f}%  (1-NN: {100 * acc_1nn:.2f}%, chance: {100 * chance:.0f}%)"
    )
    print(f"  neighbour sets identical to torch.topk's on {100 * same:.1f}% of the checked points")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run on 20,000 training points")
    args = parser.parse_args()
    if args.small:
        main(n_train=20_000, n_test=2_000)
    else:
        main()
