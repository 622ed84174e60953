"""Labels and confidence of a two-class network: arg-max + softmax over the class axis, against one
logit difference (what ``SegmentationModel`` builds for two classes).

    python benchmarks/bench_heads.py                 # 4096 x 4096 logits, median of 3

Both heads run as Keras models on the same random logits (the network itself is left out); the
labels must be equal and the confidences agree to float rounding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from napari_emgranules.core._backend import get_keras

    keras = get_keras()
    ops = keras.ops
    logits = keras.Input((None, None, 2))
    labels = ops.cast(ops.argmax(logits, axis=-1), "uint8")
    softmax = keras.Model(logits, [labels, ops.max(keras.layers.Softmax(axis=-1)(logits), axis=-1)])
    diff = logits[..., 1] - logits[..., 0]
    difference = keras.Model(logits, [ops.cast(diff > 0, "uint8"), ops.sigmoid(ops.abs(diff))])
    x = np.random.default_rng(0).normal(size=(1, args.size, args.size, 2)).astype(np.float32)
    times: dict[str, list[float]] = {"arg-max + softmax": [], "logit difference": []}
    outs = {}
    for _ in range(args.repeat + 1):  # the first round builds the graphs
        for name, model in (("arg-max + softmax", softmax), ("logit difference", difference)):
            start = time.perf_counter()
            outs[name] = model.predict_on_batch(x)
            times[name].append(time.perf_counter() - start)
    (la, ca), (lb, cb) = outs.values()
    print(f"{args.size}x{args.size} two-class logits, Keras backend "
          f"{os.environ.get('KERAS_BACKEND', 'tensorflow')}, {os.cpu_count()} CPU cores, "
          f"median of {args.repeat}:")
    for name, values in times.items():
        print(f"  {name:18s} {statistics.median(values[1:]):.3f} s")
    print(f"  labels equal: {np.array_equal(np.asarray(la), np.asarray(lb))}; largest confidence "
          f"difference {float(np.abs(np.asarray(ca) - np.asarray(cb)).max()):.1e}")


if __name__ == "__main__":
    main()
