"""Smoke test of an installed dsquant (a wheel, in a fresh environment): run it from outside the
source tree. Exact values worked out by hand, so it needs nothing but NumPy.

    python tests/wheel/smoke.py
"""
import json
import os
import subprocess
import sys

import numpy as np

import dsquant

here = os.path.dirname(os.path.abspath(__file__))
source_tree = os.path.dirname(os.path.dirname(here))
assert not dsquant.__file__.startswith(source_tree + os.sep), f"imported the source tree: {dsquant.__file__}"

# fake quantization, 4 bits, one group: absmax 1, scale 2**4 / (2 + 1e-5) ~ 7.99996, so the codes
# are round(x * scale) = 1, -4, 2, 8 -> clamped to 7, and the values code / scale (as float16)
x = np.array([0.1, -0.5, 0.25, 1.0], dtype=np.float16)
got = dsquant.fake_quantize(x, bits=4)
assert got.dtype == np.float16 and got.tolist() == [0.125, -0.5, 0.25, 0.875], got

# integer codes, 4 bits, one group: absmax 8, scale 2**4 / (2 * 8) = 1, codes 3 -2 8->7 -8,
# packed high nibble first: 0x3e 0x78; params [[1 / scale]]
q, params = dsquant.quantize(np.array([3.0, -2.0, 8.0, -8.0], dtype=np.float32), bits=4)
assert [int(b) for b in q.view(np.uint8)] == [0x3E, 0x78], q
assert params.shape == (1, 1) and params.dtype == np.float32 and params[0, 0] == 1.0, params
back = dsquant.dequantize(q, params, bits=4)
assert back.tolist() == [3.0, -2.0, 7.0, -8.0], back
back[0] = 0                                   # results are ordinary writable arrays

# the command line, from the installed package
out = subprocess.run([sys.executable, "-m", "dsquant", "info"], check=True, capture_output=True, text=True).stdout
facts = json.loads(out[out.index("{"):])
assert facts["version"] == dsquant.__version__ and facts["backends"]["cpu"] is True, facts
print(f"wheel smoke test passed: dsquant {dsquant.__version__} from {os.path.dirname(dsquant.__file__)}")
