#!/usr/bin/env python3
"""Write a reference profile for the bench workload: N numeric features (default 30) drawn
uniformly over the range the bench bodies use (1 to 10), 20 000 rows, fixed seed.

usage: python bench/make_reference.py OUT.json [FEATURES]
"""

from __future__ import annotations

import sys

import numpy as np

from modeltap.reference.builder import build_profile
from modeltap.reference.document import write_profile


def main() -> None:
    out = sys.argv[1]
    features = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    data = np.random.default_rng(7).uniform(0.5, 10.5, size=(20_000, features))
    document = build_profile(data, names=[f"f{j}" for j in range(features)], model_name="bench", numeric=())
    write_profile(document, out)
    print(f"{out}: {features} features, id {document['id']}")


if __name__ == "__main__":
    main()
