"""Writes ref30.csv (20 000 rows of 30 normal features f0..f29): the training table behind
apps_lr.py's reference profile (`modeltap profile ref30.csv -o ref30.json`)."""

import numpy as np

x = np.random.default_rng(1).normal(size=(20000, 30))
header = ",".join(f"f{j}" for j in range(30))
np.savetxt("ref30.csv", x, delimiter=",", header=header, comments="", fmt="%.6f")
