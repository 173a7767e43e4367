"""A user's typo that mypy must reject (.ci/run asserts that it does, and why)."""
import numpy as np

import dsquant

w = np.zeros((4, 8), dtype=np.float32)
dsquant.fake_quantize(w, grups=8)
