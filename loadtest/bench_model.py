"""Benchmark: the latency model (oblivious GBDT) against LightGBM and XGBoost.

The router predicts TTFT and TPOT for every candidate pod in one batched call per request, on
the event loop, so prediction latency for a handful of rows is what matters most; training runs
every ~10 s in a worker process on a window of up to ~50k samples, so it matters less. This
benchmark generates a latency-shaped dataset (12 features: KV-cache usage, queue length that is
mostly 0, running requests, prompt tokens log-uniform 10..16k, a bimodal prefix-match fraction,
in-flight and queued prefill tokens, a pod speed factor in {0.5, 1, 1.5, 2}, ...; TTFT = (queue
wait + prefill of the uncached and in-flight tokens + a decode step) / speed, times log-normal
noise) and, with every arm at the same size (200 trees, depth 6, subsample and colsample 0.8,
min 5 rows per leaf, one thread) at llm-d's learning rate 0.05 with 64 bins and at the size we
recommend (learning rate 0.1, 128 bins), measures:

* training time on 20k and 50k rows, for the mean (``l2``) and p90 (quantile) objectives;
* prediction latency for 1/16/64/256 rows (p50/p99 us, ``time.perf_counter_ns`` after warm-up),
  through each library's fastest single-threaded call (LightGBM ``Booster.predict``, XGBoost
  ``Booster.inplace_predict``);
* accuracy on 20k held-out rows, in log space as the router trains: MAPE of ``exp(pred)``
  against the true TTFT for ``l2``, pinball loss and coverage for p90;
* and, for our model only, smaller and larger ensembles (the accuracy/cost trade-off).

    .venv/bin/python -m loadtest.bench_model [--quick] [--seed 7]

An arm whose library is not importable is skipped with a note (``pip install -e '.[bench]'``).
Prints tables and writes ``results/bench_model.json``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.predictor.boosting import fit_gbdt
from scheduler.predictor.gbdt import GbdtParams

FEATURES = (
    "kv_usage",
    "waiting",
    "running",
    "inflight_requests",
    "inflight_prefill",
    "queued_prefill",
    "prompt_tokens",
    "prefix_match",
    "uncached_tokens",
    "max_tokens",
    "speed",
    "noise",
)
ALPHA = 0.9
BATCH_SIZES = (1, 16, 64, 256)
Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Size:
    """Ensemble size and the knobs that trade accuracy for cost (the rest as llm-d's)."""

    n_trees: int
    depth: int
    learning_rate: float
    n_bins: int

    @property
    def label(self) -> str:
        return f"{self.n_trees}x{self.depth} lr {self.learning_rate:g} bins {self.n_bins}"


LLM_D = Size(200, 6, 0.05, 64)
"""llm-d's XGBoost size (64 bins rather than XGBoost's 256, the same for every arm)."""
RECOMMENDED = Size(200, 6, 0.1, 128)
TRADE_OFFS = (
    Size(100, 5, 0.1, 64),
    Size(100, 5, 0.2, 128),
    Size(100, 6, 0.2, 128),
    Size(150, 6, 0.15, 128),
    LLM_D,
    Size(200, 6, 0.1, 64),
    RECOMMENDED,
    Size(300, 6, 0.05, 64),
    Size(300, 6, 0.1, 128),
    Size(200, 7, 0.1, 128),
)


def make_dataset(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 12) and TTFT in seconds, shaped like a vLLM pool under mixed load."""
    speed = rng.choice(np.array([0.5, 1.0, 1.5, 2.0]), n)
    running = rng.integers(0, 101, n).astype(np.float64)
    kv = np.clip(running / 100 * rng.uniform(0.5, 1.2, n) + rng.normal(0, 0.05, n), 0, 1)
    queued = rng.random(n) < 0.05 + 0.6 * kv**2
    waiting = np.where(queued, np.minimum(rng.geometric(0.25, n), 30), 0).astype(np.float64)
    inflight = running + waiting + rng.poisson(1.0, n)
    prompt = np.round(np.exp(rng.uniform(np.log(10), np.log(16_000), n)))
    prefix = np.where(rng.random(n) < 0.5, rng.beta(0.5, 8, n), rng.beta(8, 1.5, n))
    uncached = np.maximum(prompt - np.floor(prompt * prefix / 16) * 16, 1)
    inflight_prefill = np.where(
        rng.random(n) < 0.4, 0.0, np.minimum(rng.lognormal(np.log(2000), 1.2, n), 64_000)
    )
    queued_prefill = waiting * rng.lognormal(np.log(1500), 1.0, n)
    max_tokens = rng.choice(np.array([128.0, 256.0, 512.0, 1024.0, 2048.0]), n)
    noise = rng.random(n)

    def prefill_s(tokens: np.ndarray) -> np.ndarray:
        result: np.ndarray = tokens / 8000 * (1 + tokens / 32_000)
        return result

    step_s = 0.015 + 0.0002 * running + 0.01 * kv
    queue_wait_s = waiting * 8 * step_s + prefill_s(queued_prefill)
    ttft = 0.005 + queue_wait_s + 0.8 * prefill_s(inflight_prefill) + prefill_s(uncached) + step_s
    ttft = ttft / speed * rng.lognormal(0.0, 0.2, n)
    X = np.column_stack(
        [
            kv,
            waiting,
            running,
            inflight,
            inflight_prefill,
            queued_prefill,
            prompt,
            prefix,
            uncached,
            max_tokens,
            speed,
            noise,
        ]
    )
    return X, ttft


@dataclass(frozen=True, slots=True)
class Arm:
    """One implementation: ``fit(X, y_log, objective, size, seed)`` -> its fastest predict."""

    name: str
    fit: Callable[[np.ndarray, np.ndarray, str, Size, int], Predict]


def ours(X: np.ndarray, y: np.ndarray, objective: str, size: Size, seed: int) -> Predict:
    params = GbdtParams(
        n_trees=size.n_trees,
        depth=size.depth,
        learning_rate=size.learning_rate,
        n_bins=size.n_bins,
        objective="l2" if objective == "l2" else "quantile",
        alpha=ALPHA,
    )
    return fit_gbdt(X, y, params, rng=np.random.default_rng(seed)).predict


def lightgbm_arm(lgb: Any) -> Arm:
    def fit(X: np.ndarray, y: np.ndarray, objective: str, size: Size, seed: int) -> Predict:
        params = {
            "objective": "regression" if objective == "l2" else "quantile",
            "alpha": ALPHA,
            "learning_rate": size.learning_rate,
            "max_depth": size.depth,
            "num_leaves": 2**size.depth,
            "min_child_samples": 5,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "feature_fraction": 0.8,
            "max_bin": size.n_bins,
            "num_threads": 1,
            "seed": seed,
            "verbose": -1,
        }
        dataset = lgb.Dataset(X, y, params={"max_bin": size.n_bins, "verbose": -1})
        booster = lgb.train(params, dataset, num_boost_round=size.n_trees)

        def predict(rows: np.ndarray) -> np.ndarray:
            return np.asarray(booster.predict(rows, num_threads=1))

        return predict

    return Arm("lightgbm", fit)


def xgboost_arm(xgb: Any) -> Arm:
    def fit(X: np.ndarray, y: np.ndarray, objective: str, size: Size, seed: int) -> Predict:
        params: dict[str, Any] = {
            "objective": "reg:squarederror" if objective == "l2" else "reg:quantileerror",
            "eta": size.learning_rate,
            "max_depth": size.depth,
            "min_child_weight": 5,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "tree_method": "hist",
            "max_bin": size.n_bins,
            "nthread": 1,
            "seed": seed,
        }
        if objective != "l2":
            params["quantile_alpha"] = ALPHA
        matrix = xgb.DMatrix(X, y, nthread=1)
        booster = xgb.train(params, matrix, num_boost_round=size.n_trees)

        def predict(rows: np.ndarray) -> np.ndarray:
            return np.asarray(booster.inplace_predict(rows))

        return predict

    return Arm("xgboost", fit)


def available_arms() -> tuple[list[Arm], list[str]]:
    arms, notes = [Arm("ours", ours)], []
    for module, build in (("lightgbm", lightgbm_arm), ("xgboost", xgboost_arm)):
        try:
            arms.append(build(importlib.import_module(module)))
        except ImportError as error:
            notes.append(f"{module} skipped ({error}); install with: pip install -e '.[bench]'")
    return arms, notes


def latency_us(predict: Predict, X: np.ndarray, repeats: int) -> tuple[float, float]:
    """p50 and p99 of one call, after a warm-up, with the garbage collector off."""
    for _ in range(max(repeats // 10, 50)):
        predict(X)
    samples = np.empty(repeats)
    gc.disable()
    try:
        for i in range(repeats):
            start = time.perf_counter_ns()
            predict(X)
            samples[i] = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return float(np.percentile(samples, 50)) / 1e3, float(np.percentile(samples, 99)) / 1e3


def accuracy(predict: Predict, objective: str, X: np.ndarray, ttft: np.ndarray) -> dict[str, float]:
    """MAPE of ``exp(pred)`` (l2 in log space), or pinball loss in log space and coverage."""
    pred_log = predict(X)
    if objective == "l2":
        return {"mape": float(np.mean(np.abs(np.exp(pred_log) - ttft) / ttft))}
    diff = np.log(ttft) - pred_log
    return {
        "pinball": float(np.mean(np.maximum(ALPHA * diff, (ALPHA - 1) * diff))),
        "coverage": float(np.mean(diff <= 0)),
    }


def timed_fit(
    arm: Arm, X: np.ndarray, y: np.ndarray, objective: str, size: Size, seed: int
) -> tuple[Predict, float]:
    gc.collect()
    start = time.perf_counter()
    predict = arm.fit(X, y, objective, size, seed)
    return predict, time.perf_counter() - start


def run(*, seed: int, quick: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    X_train, ttft_train = make_dataset(rng, 50_000)
    X_test, ttft_test = make_dataset(rng, 20_000)
    y_train = np.log(ttft_train)
    ours_repeats, library_repeats = (2000, 300) if quick else (20_000, 3000)
    arms, notes = available_arms()
    comparison: list[dict[str, Any]] = []
    for size in (LLM_D, RECOMMENDED):
        for arm in arms:
            repeats = ours_repeats if arm.name == "ours" else library_repeats
            for objective in ("l2", "quantile"):
                row: dict[str, Any] = {"size": size.label, "arm": arm.name, "objective": objective}
                _, row["train_s_20k"] = timed_fit(
                    arm, X_train[:20_000], y_train[:20_000], objective, size, seed
                )
                predict, row["train_s_50k"] = timed_fit(
                    arm, X_train, y_train, objective, size, seed
                )
                row.update(accuracy(predict, objective, X_test, ttft_test))
                if objective == "l2":
                    for n in BATCH_SIZES:
                        p50, p99 = latency_us(predict, X_test[:n], repeats)
                        row[f"p50_us_{n}"], row[f"p99_us_{n}"] = p50, p99
                comparison.append(row)
    trade_offs: list[dict[str, Any]] = []
    for size in TRADE_OFFS:
        row = {"size": size.label}
        for objective in ("l2", "quantile"):
            predict, seconds = timed_fit(Arm("ours", ours), X_train, y_train, objective, size, seed)
            row[f"train_s_50k_{objective}"] = seconds
            row.update(accuracy(predict, objective, X_test, ttft_test))
            if objective == "l2":
                for n in (1, 16, 64):
                    row[f"p50_us_{n}"] = latency_us(predict, X_test[:n], ours_repeats)[0]
        trade_offs.append(row)
    return {"comparison": comparison, "trade_offs": trade_offs, "notes": notes}


def print_tables(result: dict[str, Any]) -> None:
    print("every arm at the same size, one thread; accuracy on 20k held-out rows")
    print(
        f"{'size':<24} {'arm':<9} {'objective':<9} {'fit 20k s':>9} {'fit 50k s':>9} "
        f"{'MAPE':>6} {'pinball':>8} {'cover':>6}  "
        + " ".join(f"{f'p50/p99 us @{n}':>17}" for n in BATCH_SIZES)
    )
    for row in result["comparison"]:
        latency = " ".join(
            f"{row[f'p50_us_{n}']:>8.1f}/{row[f'p99_us_{n}']:<8.1f}"
            if f"p50_us_{n}" in row
            else f"{'':>17}"
            for n in BATCH_SIZES
        )
        print(
            f"{row['size']:<24} {row['arm']:<9} {row['objective']:<9} "
            f"{row['train_s_20k']:>9.2f} {row['train_s_50k']:>9.2f} {_fmt(row, 'mape', 6, 3)} "
            f"{_fmt(row, 'pinball', 8, 4)} {_fmt(row, 'coverage', 6, 3)}  {latency}"
        )
    print("\nours at other sizes (trained on 50k rows)")
    print(
        f"{'size':<24} {'fit l2 s':>8} {'fit p90 s':>9} {'MAPE':>6} {'pinball':>8} {'cover':>6} "
        f"{'p50 us @1':>9} {'@16':>6} {'@64':>6}"
    )
    for row in result["trade_offs"]:
        print(
            f"{row['size']:<24} {row['train_s_50k_l2']:>8.2f} {row['train_s_50k_quantile']:>9.2f} "
            f"{row['mape']:>6.3f} {row['pinball']:>8.4f} {row['coverage']:>6.3f} "
            f"{row['p50_us_1']:>9.1f} {row['p50_us_16']:>6.1f} {row['p50_us_64']:>6.1f}"
        )
    for note in result["notes"]:
        print(f"note: {note}")


def _fmt(row: dict[str, Any], key: str, width: int, digits: int) -> str:
    return f"{row[key]:>{width}.{digits}f}" if key in row else f"{'-':>{width}}"


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Latency model: ours vs LightGBM vs XGBoost.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--out", type=Path, default=Path("results/bench_model.json"))
    args = parser.parse_args(argv)
    result = run(seed=args.seed, quick=args.quick)
    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": "bench_model",
        "command": "python -m loadtest.bench_model" + (" --quick" if args.quick else ""),
        "seed": args.seed,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {m: _version(m) for m in ("numpy", "lightgbm", "xgboost")},
        "features": list(FEATURES),
    }
    args.out.write_text(json.dumps(meta | result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
