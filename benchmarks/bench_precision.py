#!/usr/bin/env python
"""Speed and agreement of mixed-precision and compiled inference against float32.

Usage::

    python benchmarks/bench_precision.py [--size 2048] [--repeats 3] [--variants float32,float32+jit,bfloat16]

For each variant (``precision`` or ``precision+jit``) both bundled models segment one synthetic
micrograph (``mode="whole"``): one warm-up call (graph building, compilation), then the median of
``--repeats`` timed calls, and the fraction of pixels whose label differs from float32. On a GPU
with the JAX backend: ``KERAS_BACKEND=jax python benchmarks/bench_precision.py --size 4096``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="float32,float32+jit,bfloat16")
    args = parser.parse_args()

    from napari_emgranules.core._backend import backend_name
    from napari_emgranules.core.segment import segment_micrograph
    from napari_emgranules.core.synthetic import synthetic_micrograph

    image = synthetic_micrograph((args.size, args.size), 0.8, seed=3).image
    print(f"{args.size}x{args.size} synthetic micrograph, both bundled models, whole mode, "
          f"Keras backend {backend_name()}, median of {args.repeats}:")
    reference = None
    for variant in args.variants.split(","):
        precision, _, jit = variant.partition("+")
        kwargs = {"mode": "whole", "precision": precision, "jit": jit == "jit"}
        t = time.perf_counter()
        result = segment_micrograph(image, **kwargs)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            segment_micrograph(image, **kwargs)
            times.append(time.perf_counter() - t)
        if reference is None:
            reference = result
        differ = {k: float((result.labels[k] != reference.labels[k]).mean()) for k in result.labels}
        print(f"  {variant:14s} first {first:6.2f} s, then {statistics.median(times):6.2f} s; "
              f"labels differing from {args.variants.split(',')[0]}: "
              + ", ".join(f"{k} {100 * v:.3f}%" for k, v in differ.items()))


if __name__ == "__main__":
    main()
