"""Speed of Network.learn_one and predict, as ratios against baselines run in the same process.

Baselines, each doing the same single-sample SGD step (sigmoid layers, log loss):
- straightforward numpy: the textbook step, allocating as it goes;
- scikit-learn MLPClassifier.partial_fit on one sample (if installed);
- PyTorch on the CPU (if installed).

Run: .venv/bin/python benchmarks/bench_model.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from model import Network

Step = tuple[Callable[[], object], Callable[[], object]]


def time_us(
    fns: dict[str, Callable[[], object]], seconds: float, rounds: int = 15
) -> dict[str, float]:
    """Microseconds per call of each fn: best of `rounds`, the fns interleaved in every
    round so that a noisy neighbour slows them all alike."""
    loops = {}
    for name, fn in fns.items():  # calibrate each loop to ~seconds / rounds / len(fns)
        n = 8
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            if time.perf_counter() - t0 > seconds / rounds / len(fns):
                break
            n *= 2
        loops[name] = n
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return {name: t * 1e6 for name, t in best.items()}


class StraightforwardNumpy:
    """The textbook per-sample step: allocates every intermediate, one line per formula."""

    def __init__(self, net: Network) -> None:
        self.w = [w.copy() for w in net.weights]
        self.b = [b.copy() for b in net.biases]
        self.lr = net.learning_rate

    def predict(self, x: np.ndarray) -> np.ndarray:
        a = x
        for w, b in zip(self.w, self.b, strict=True):
            a = 1.0 / (1.0 + np.exp(-(a @ w + b)))
        return a

    def learn_one(self, x: np.ndarray, t: float) -> None:
        acts = [x]
        for w, b in zip(self.w, self.b, strict=True):
            acts.append(1.0 / (1.0 + np.exp(-(acts[-1] @ w + b))))
        delta = acts[-1] - t  # log loss on a sigmoid output
        for l in range(len(self.w) - 1, -1, -1):
            grad_w = np.outer(acts[l], delta)
            if l:
                back = (self.w[l] @ delta) * acts[l] * (1 - acts[l])
            self.w[l] -= self.lr * grad_w
            self.b[l] -= self.lr * delta
            if l:
                delta = back


def baselines(sizes: list[int], net: Network, xs: np.ndarray, ts: np.ndarray) -> dict[str, Step]:
    """(learn_one, predict) callables of every implementation available here."""
    i = [0]

    def sample() -> tuple[np.ndarray, float]:
        i[0] = (i[0] + 1) & 255
        return xs[i[0]], ts[i[0]]

    plain = StraightforwardNumpy(net)
    impls: dict[str, Step] = {
        "tickprop Network": (lambda: net.learn_one(*sample()), lambda: net.predict(sample()[0])),
        "straightforward numpy": (
            lambda: plain.learn_one(*sample()),
            lambda: plain.predict(sample()[0]),
        ),
    }
    try:
        import warnings

        from sklearn.neural_network import MLPClassifier

        warnings.simplefilter("ignore")
        clf = MLPClassifier(
            hidden_layer_sizes=sizes[1:-1],
            activation="logistic",
            solver="sgd",
            learning_rate_init=net.learning_rate,
            momentum=0.0,
            alpha=0.0,
            random_state=0,
        )
        clf.partial_fit(xs[:2], [0, 1], classes=[0, 1])

        def sk_learn() -> None:
            x, t = sample()
            clf.partial_fit(x[None, :], [int(t)])

        impls["scikit-learn partial_fit"] = (
            sk_learn,
            lambda: clf.predict_proba(sample()[0][None, :]),
        )
    except ImportError:
        print("  (scikit-learn not installed: skipped)")
    try:
        import torch

        torch.set_num_threads(1)
        layers: list[torch.nn.Module] = []
        for n, m in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [torch.nn.Linear(n, m, dtype=torch.float64), torch.nn.Sigmoid()]
        model = torch.nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(model.parameters(), lr=net.learning_rate)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        txs, tts = torch.from_numpy(xs), torch.from_numpy(ts).reshape(-1, 1)

        def torch_learn() -> None:
            i[0] = (i[0] + 1) & 255
            opt.zero_grad()
            loss_fn(model(txs[i[0]][None, :]), tts[i[0]][None, :]).backward()
            opt.step()

        def torch_predict() -> None:
            with torch.no_grad():
                torch.sigmoid(model(txs[i[0]][None, :]))

        impls["PyTorch (CPU)"] = (torch_learn, torch_predict)
    except ImportError:
        print("  (PyTorch not installed: skipped)")
    return impls


def bench(sizes: list[int], seconds: float) -> None:
    net = Network(sizes, "sigmoid", "log", learning_rate=0.01, seed=7)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(256, sizes[0]))
    ts = rng.integers(0, 2, size=256).astype(float)
    impls = baselines(sizes, net, xs, ts)
    learn = time_us({name: fns[0] for name, fns in impls.items()}, seconds)
    predict = time_us({name: fns[1] for name, fns in impls.items()}, seconds)
    ours = "tickprop Network"
    print(f"\nsizes {sizes}, float64, one sample per call, best of interleaved rounds")
    head = ("implementation", "learn_one µs", "x ours", "predict µs", "x ours")
    print("  {:26s} {:>13s} {:>8s} {:>11s} {:>8s}".format(*head))
    for name in impls:
        print(
            f"  {name:26s} {learn[name]:13.2f} {learn[name] / learn[ours]:8.2f}"
            f" {predict[name]:11.2f} {predict[name] / predict[ours]:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    args = parser.parse_args()
    for sizes in ([16, 32, 1], [32, 64, 32, 1]):
        bench(sizes, args.seconds)


if __name__ == "__main__":
    main()
