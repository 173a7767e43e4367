"""Quantized safetensors checkpoints (docs/checkpoints.md): the stored codes and params against the
integer-format reference, the schema's records, the selection policy, the streaming CLI (same file
contents as save_quantized, memory bounded by the largest tensor, the error table), its inverse,
and a torch model loaded from a quantized file."""
import fcntl
import json
import math
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import dsquant
import reference as ref
import reference_int as ref_int
from _optional import require
from dsquant.checkpoint import Policy, dequantize_file, quantize_file
from dsquant.checkpoint.demo import demo_tensors
from helpers import check_exact, sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def metadata(path):
    with safe_open(str(path), framework="np") as f:
        return f.metadata()


def cli(*args, **kwargs):
    """The command line in a fresh interpreter in this checkout (stdout, stderr)."""
    code = f"import sys; from dsquant.__main__ import main; sys.exit(main({[str(a) for a in args]!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          check=True, **kwargs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("bits, symmetric", [(8, True), (4, True), (2, True), (3, True), (8, False), (4, False)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("shape, block", [((6, 256), 128), ((384,), 64), ((2, 3, 32), 32), ((4, 20), 10)],
                         ids=["6x256/128", "384/64", "2x3x32/32", "4x20/10"])
def test_stored_codes_params_and_values_match_the_reference(tmp_path, dtype, bits, symmetric, shape, block):
    x = sample(dtype, shape, seed=bits + len(shape))
    path = tmp_path / "m.safetensors"
    [report] = dsquant.save_quantized(path, {"w": x}, bits=bits, block_size=block, symmetric=symmetric)
    groups = x.size // block                       # blocks along the last axis, in C order
    data, params = ref_int.quantize_ref(x, groups, bits, symmetric)
    stored = load_file(str(path))
    assert sorted(stored) == ["w:codes", "w:params"]
    check_exact(stored["w:codes"].view(np.uint8).reshape(-1), data)
    # params: the block grid (the leading shape, the last axis // block) + the fields
    assert stored["w:params"].shape == shape[:-1] + (shape[-1] // block, params.shape[1])
    check_exact(stored["w:params"].reshape(params.shape), params)
    expected = ref_int.dequantize_ref(data, params, bits, dtype).reshape(shape)
    back = dsquant.load_quantized(path)["w"]
    check_exact(back, expected)
    error = np.linalg.norm(expected.astype(np.float64) - x) / np.linalg.norm(x.astype(np.float64))
    assert report.relative_error == pytest.approx(error, rel=1e-9)
    assert report.bytes_before == x.nbytes
    assert report.bytes_after == x.size * bits // 8 + params.nbytes if 8 % bits == 0 else x.size + params.nbytes
    check_exact(dsquant.load_quantized(path, dtype="float32")["w"],
                ref_int.dequantize_ref(data, params, bits, "float32").reshape(shape))


def test_the_record_of_a_quantized_tensor_is_the_documented_schema(tmp_path):
    x = sample("float16", (4, 256), seed=1)
    dsquant.save_quantized(tmp_path / "m.safetensors", {"w": x, "b": np.arange(3)}, bits=4, block_size=128,
                           metadata={"format": "pt", "note": "kept"})
    meta = metadata(tmp_path / "m.safetensors")
    assert meta["dsquant.schema"] == "1" and meta["dsquant.version"] == dsquant.__version__
    assert meta["format"] == "pt" and meta["note"] == "kept"
    assert json.loads(meta["dsquant.tensors"]) == {
        "w": {"format": "int4", "bits": 4, "symmetric": True, "grouping": {"block_size": [1, 128]}, "groups": 8,
              "codes": "w:codes", "packed": True, "params": "w:params", "params_fields": ["inv_scale"],
              "shape": [4, 256], "dtype": "float16"},
        "b": {"format": "raw", "data": "b", "shape": [3], "dtype": "int64"}}
    with safe_open(str(tmp_path / "m.safetensors"), framework="np") as f:
        shapes = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {"w:codes": ("I8", [4, 128]), "w:params": ("F32", [4, 2, 1]), "b": ("I64", [3])}


def test_policy_keeps_what_it_does_not_quantize_bit_for_bit(tmp_path):
    x = {"a.weight": sample("float32", (8, 256), 1), "a.bias": sample("float32", (256,), 2),
         "b.weight": sample("float32", (8, 256), 3), "odd.weight": sample("float32", (4, 100), 4),
         "ids": np.arange(10, dtype=np.int32), "c.weight": sample("bfloat16", (4, 128), 5),
         "nibble.weight": sample("float32", (3, 3), 6), "emb": sample("float32", (8, 256), 7)}
    reports = dsquant.save_quantized(tmp_path / "m.safetensors", x, bits=4, block_size=128,
                                     include=["*.weight", "*.bias"], exclude=["b.*"], skip_small=300)
    how = {r.name: r.stored_as for r in reports}
    assert how == {"a.weight": "int4, blocks of 128", "a.bias": "as is: small (256 < 300 elements)",
                   "b.weight": "as is: excluded",
                   "odd.weight": "as is: last dimension 100 is not a multiple of the block size 128",
                   "ids": "as is: not a float tensor (int32)", "c.weight": "int4, blocks of 128",
                   "nibble.weight": "as is: small (9 < 300 elements)", "emb": "as is: not included"}
    back = dsquant.load_quantized(tmp_path / "m.safetensors")
    for name in ("a.bias", "b.weight", "odd.weight", "ids", "emb"):
        check_exact(back[name], x[name])
    assert back["c.weight"].dtype == ref.BF16 and back["a.weight"].dtype == np.float32
    only = dsquant.save_quantized(tmp_path / "n.safetensors", x, bits=3, block_size=3, include=["nibble.*"])
    assert [r.name for r in only if not r.stored_as.startswith("as is")] == ["nibble.weight"]
    packs = dsquant.save_quantized(tmp_path / "p.safetensors", {"w": x["nibble.weight"]}, bits=4, block_size=3)
    assert packs[0].stored_as == "as is: last dimension 3 does not pack 2 4-bit codes per byte"


@pytest.mark.parametrize("kwargs, error", [
    ({"bits": 9}, "bits must be in 2..8, got 9"),
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"skip_small": -1}, "skip_small must be 0 or more elements, got -1"),
])
def test_bad_arguments_name_themselves(tmp_path, kwargs, error):
    with pytest.raises(ValueError, match=error):
        dsquant.save_quantized(tmp_path / "m.safetensors", {"w": np.ones(128, np.float32)}, **kwargs)


def test_names_that_would_collide_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'w:codes', which tensor 'w' already uses"):
        dsquant.save_quantized(tmp_path / "m.safetensors", {"w": np.ones(128, np.float32),
                                                            "w:codes": np.ones(3, np.int8)})


def _rewrite_metadata(src, dst, change):
    tensors = load_file(str(src))
    meta = metadata(src)
    change(meta)
    save_file(tensors, str(dst), metadata=meta)


@pytest.mark.parametrize("change, error", [
    (lambda m: m.update({"dsquant.schema": "2"}),
     "uses dsquant checkpoint schema '2'; this dsquant reads versions 1..1"),
    (lambda m: m.pop("dsquant.schema"), "is not a dsquant quantized checkpoint"),
    (lambda m: m.update({"dsquant.tensors": m["dsquant.tensors"].replace('"int4"', '"fp8_e4m3"')}),
     "stored in format 'fp8_e4m3', which this dsquant cannot read \\(it reads raw, int2, int3"),
    (lambda m: m.update({"dsquant.tensors": m["dsquant.tensors"].replace('"block_size"', '"tiles"')}),
     "grouping {'tiles': \\[1, 128\\]}, which this dsquant cannot decode \\(it reads one of groups, block_size, axis"),
    (lambda m: m.update({"dsquant.tensors": m["dsquant.tensors"].replace("[1,128]", "[1,100]")}),
     "grouping {'block_size': \\[1, 100\\]} does not fit shape \\[4, 256\\]"),
    (lambda m: m.update({"dsquant.tensors": m["dsquant.tensors"].replace('"groups":8', '"groups":4')}),
     "inconsistent record"),
], ids=["newer", "not-dsquant", "unknown-format", "unknown-grouping", "misfit-grouping", "inconsistent"])
def test_files_this_version_cannot_read_say_why(tmp_path, change, error):
    dsquant.save_quantized(tmp_path / "m.safetensors", {"w": sample("float32", (4, 256), 0)}, bits=4)
    _rewrite_metadata(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", change)
    with pytest.raises(ValueError, match=error):
        dsquant.load_quantized(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=error):
        dequantize_file(str(tmp_path / "bad.safetensors"), str(tmp_path / "out.safetensors"))
    assert not os.path.exists(tmp_path / "out.safetensors")


def test_contiguous_groups_records_are_read(tmp_path):
    """A record with DeepSpeed's groups= (count of contiguous runs) decodes as documented."""
    x = sample("float32", (3, 10), 2)
    dsquant.save_quantized(tmp_path / "m.safetensors", {"w": x}, bits=8, block_size=10)
    data, params = ref_int.quantize_ref(x, 2, 8, True)
    tensors = {"w:codes": data.view(np.int8).reshape(3, 10), "w:params": params}
    meta = metadata(tmp_path / "m.safetensors")
    record = json.loads(meta["dsquant.tensors"])
    record["w"].update(grouping={"groups": 2}, groups=2)
    meta["dsquant.tensors"] = json.dumps(record)
    save_file(tensors, str(tmp_path / "g.safetensors"), metadata=meta)
    check_exact(dsquant.load_quantized(tmp_path / "g.safetensors")["w"],
                ref_int.dequantize_ref(data, params, 8, "float32").reshape(3, 10))


@pytest.mark.parametrize("grouping", [{"axis": 1}, {"axis": 0}, {"block_size": (2, 64)}, {"groups": 8}],
                         ids=lambda g: str(g))
def test_quantized_tensors_of_any_grouping_round_trip(tmp_path, grouping):
    """QuantizedTensors (dsquant.quantize's results) are stored as they are, with their grouping in
    the record, and load back as QuantizedTensors or as values that match the reference."""
    x = sample("float32", (4, 256), 7)
    r = dsquant.quantize(x, bits=4, **grouping)
    [report] = dsquant.save_quantized(tmp_path / "m.safetensors", {"w": r})
    assert math.isnan(report.relative_error) and report.bytes_before == x.nbytes
    (kind, value), = grouping.items()
    record = json.loads(metadata(tmp_path / "m.safetensors")["dsquant.tensors"])["w"]
    assert record["grouping"] == {kind: list(value) if isinstance(value, tuple) else value}
    # the reference, with the groups laid out contiguously: columns (axis=1), 2x64 tiles, rows
    if grouping == {"axis": 1}:
        order, groups = x.T, 256
    elif kind == "block_size":
        order, groups = x.reshape(2, 2, 4, 64).transpose(0, 2, 1, 3), 8
    else:
        order, groups = x, 4 if kind == "axis" else 8
    data, params = ref_int.quantize_ref(np.ascontiguousarray(order), groups, 4, True)
    values = ref_int.dequantize_ref(data, params, 4, "float32").reshape(order.shape)
    expected = values.T if grouping == {"axis": 1} else (
        values.transpose(0, 2, 1, 3).reshape(4, 256) if kind == "block_size" else values)
    check_exact(dsquant.load_quantized(tmp_path / "m.safetensors")["w"], np.ascontiguousarray(expected))
    back = dsquant.load_quantized(tmp_path / "m.safetensors", dequantize=False)["w"]
    assert isinstance(back, dsquant.QuantizedTensor) and back.grouping == r.grouping and back.bits == 4
    check_exact(back.codes, r.codes)
    check_exact(back.params, r.params)


def test_cli_file_holds_what_save_quantized_writes(tmp_path):
    tensors = demo_tensors(layers=1, width=256, hidden=512, seed=3)
    tensors["step"] = np.array(7, dtype=np.int64)
    src = tmp_path / "m.safetensors"
    save_file(tensors, str(src), metadata={"format": "pt"})
    out = cli("quantize-checkpoint", src, tmp_path / "q.safetensors", "--bits", "4", "--block-size", "64",
              "--exclude", "*.norm.*", "--skip-small", "300").stdout
    expected = dsquant.save_quantized(tmp_path / "s.safetensors", tensors, bits=4, block_size=64,
                                      exclude=["*.norm.*"], skip_small=300, metadata={"format": "pt"})
    streamed, saved = load_file(str(tmp_path / "q.safetensors")), load_file(str(tmp_path / "s.safetensors"))
    assert streamed.keys() == saved.keys()
    for key, value in saved.items():
        check_exact(streamed[key], value)
    meta_streamed, meta_saved = metadata(tmp_path / "q.safetensors"), metadata(tmp_path / "s.safetensors")
    assert json.loads(meta_streamed.pop("dsquant.tensors")) == json.loads(meta_saved.pop("dsquant.tensors"))
    assert meta_streamed == meta_saved
    # the table: one row per tensor with its error and bytes, and the total compression
    for r in expected:
        error = "0 (exact)" if r.stored_as.startswith("as is") else f"{r.relative_error:.2e}"
        row = (f"| {r.name} | {'x'.join(map(str, r.shape)) or '()'} | {r.dtype} | {r.stored_as} | {error} | "
               f"{r.bytes_before} | {r.bytes_after} |")
        assert row in out, out
    before = sum(t.nbytes for t in tensors.values())
    after = sum(r.bytes_after for r in expected)
    assert f"| total (4 of 7 quantized) | | | | | {before} | {after} |" in out
    assert f"compression: {before / after:.2f}x of the tensor bytes ({before} -> {after})" in out
    # and back: a plain safetensors file, the original names, shapes and dtypes
    cli("dequantize-checkpoint", tmp_path / "q.safetensors", tmp_path / "back.safetensors")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert metadata(tmp_path / "back.safetensors") == {"format": "pt"}
    loaded = dsquant.load_quantized(tmp_path / "q.safetensors")
    assert back.keys() == tensors.keys() == loaded.keys()
    for name, value in back.items():
        check_exact(value, loaded[name])
        assert value.shape == tensors[name].shape and value.dtype == tensors[name].dtype
    cli("dequantize-checkpoint", tmp_path / "q.safetensors", tmp_path / "f32.safetensors", "--dtype", "float32")
    assert load_file(str(tmp_path / "f32.safetensors"))["layers.0.up.weight"].dtype == np.float32


def test_quantizing_a_quantized_file_is_refused(tmp_path):
    dsquant.save_quantized(tmp_path / "m.safetensors", {"w": np.ones(128, np.float32)})
    with pytest.raises(ValueError, match="already a dsquant quantized checkpoint"):
        quantize_file(str(tmp_path / "m.safetensors"), str(tmp_path / "q.safetensors"), Policy())


@pytest.mark.parametrize("command, source, needle", [
    ("quantize-checkpoint", "quantized", "is already a dsquant quantized checkpoint"),
    ("quantize-checkpoint", "missing", "No such file"),
    ("dequantize-checkpoint", "plain", "is not a dsquant quantized checkpoint"),
])
def test_cli_errors_are_one_line(tmp_path, command, source, needle):
    dsquant.save_quantized(tmp_path / "quantized", {"w": np.ones(128, np.float32)})
    save_file({"w": np.ones(128, np.float32)}, str(tmp_path / "plain"))
    result = subprocess.run([sys.executable, "-m", "dsquant", command, str(tmp_path / source),
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"python -m dsquant {command}: ") and needle in line, line
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.partial")


MEMORY = """
import sys
import numpy as np
import dsquant
from dsquant.checkpoint import Policy, dequantize_file, quantize_file
mode, src, dst = sys.argv[1:]
# everything imported and the thread pool started before the baseline
dsquant.dequantize(*dsquant.quantize(np.ones(1 << 16, np.float32), 512, bits=4), bits=4)
def status(field):   # kB; VmHWM is this process's peak resident set (ru_maxrss may carry the forking parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
def reset_peak():    # "5" resets VmHWM to the current resident set (Linux 4.0+)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
reset_peak()
base = status("VmRSS")
if mode == "quantize":
    quantize_file(src, dst, Policy(bits=4, block_size=128))
else:
    dequantize_file(src, dst)
print(status("VmHWM") - base)
"""


def test_streaming_memory_is_bounded_by_the_largest_tensor(tmp_path):
    """Peak RSS of quantize_file and dequantize_file on a 128 MiB file of sixteen 8 MiB tensors:
    a few times the largest tensor, far from the file's size (holding the tensors, or reading them
    through one safe_open handle, which keeps every mapped page resident, would exceed the bound).
    The peak is measured in the child as VmHWM after resetting it (/proc/self/clear_refs)."""
    largest = 8 << 20
    src = tmp_path / "big.safetensors"
    save_file({f"layer{i}.weight": np.random.default_rng(i).standard_normal((2048, 1024), dtype=np.float32)
               for i in range(16)}, str(src))
    assert os.path.getsize(src) > 16 * largest

    def peak(*args):      # each in a fresh process
        out = subprocess.run([sys.executable, "-c", MEMORY, *map(str, args)], capture_output=True, text=True,
                             cwd=ROOT, timeout=600, check=True)
        return int(out.stdout)
    quantize_peak = peak("quantize", src, tmp_path / "q.safetensors")
    dequantize_peak = peak("dequantize", tmp_path / "q.safetensors", tmp_path / "back.safetensors")
    print(f"peak RSS above the baseline: quantize {quantize_peak / 2**20:.1f} MiB, "
          f"dequantize {dequantize_peak / 2**20:.1f} MiB (largest tensor 8 MiB, file 128 MiB)")
    # measured: about 35 MiB (the tensor's mapped pages, its copy, the codes, the dequantized copy
    # for the error) and 11-19 MiB; holding the file: over 128 MiB
    assert 0 < quantize_peak < 6 * largest
    assert 0 < dequantize_peak < 6 * largest
    back = load_file(str(tmp_path / "back.safetensors"))
    assert len(back) == 16 and back["layer3.weight"].shape == (2048, 1024)


def test_progress_bar_on_a_terminal_only(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(demo_tensors(layers=1, width=128, hidden=256), str(src))
    piped = cli("quantize-checkpoint", src, tmp_path / "q.safetensors")
    assert "B/s" not in piped.stderr and "%|" not in piped.stderr
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # 0 columns: tqdm shows nothing
    code = ("import sys; from dsquant.__main__ import main; "
            f"sys.exit(main(['quantize-checkpoint', {str(src)!r}, {str(tmp_path / 't.safetensors')!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=secondary, stdout=secondary, stderr=secondary,
                            cwd=ROOT)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:       # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert proc.wait(timeout=300) == 0, seen
    assert b"B/s" in seen and b"| total (" in seen, seen


def test_demo_checkpoint_command(tmp_path):
    out = cli("demo-checkpoint", tmp_path / "mlp.safetensors", "--seed", "1").stdout
    tensors = load_file(str(tmp_path / "mlp.safetensors"))
    assert sorted(tensors) == sorted(demo_tensors(seed=1))
    for name, value in demo_tensors(seed=1).items():
        check_exact(tensors[name], value)
    w = tensors["layers.0.up.weight"].astype(np.float64)
    assert w.shape == (1536, 512) and w.dtype == np.float64
    kurtosis = np.mean(w ** 4) / np.mean(w ** 2) ** 2
    assert kurtosis > 4      # heavy-tailed, as trained weights are (a Gaussian has 3)
    assert f"{sum(t.nbytes for t in tensors.values())} bytes" in out


def test_torch_model_loads_a_quantized_checkpoint_within_the_bound(tmp_path):
    """A torch MLP y = W2 relu(W1 x + b1) + b2 loaded from an int8 / int4 file (weights in blocks of
    128 along the input axis, biases kept). Symmetric b-bit codes move each weight by at most one
    step of its block, step = absmax / 2**(b-1) (half a step by rounding, one at the clipped top),
    so elementwise |dy| <= |W2'| (S1 |x|) + S2 |h| with S the steps: the bound asserted here, with
    float32 rounding slack. It is derived from the float weights, not from the file."""
    torch = require("torch")          # fails without torch, as the interop tests do (skips only under the GPU check)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64))
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    x = torch.randn(32, 256)
    with torch.no_grad():
        y = model(x).numpy().astype(np.float64)
        h = model[1](model[0](x)).numpy().astype(np.float64)
    for bits, worst in ((8, 0.02), (4, 0.3)):
        path = tmp_path / f"int{bits}.safetensors"
        dsquant.save_quantized(path, state, bits=bits, block_size=128, skip_small=1024)
        quantized = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64))
        quantized.load_state_dict({k: torch.from_numpy(v) for k, v in dsquant.load_quantized(path).items()})
        with torch.no_grad():
            y_q = quantized(x).numpy().astype(np.float64)
            w2_q = quantized[2].weight.numpy().astype(np.float64)

        def steps(w, bits=bits):
            blocks = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1, 128)
            return np.repeat(blocks.max(axis=2) / 2 ** (bits - 1), 128, axis=1) * (1 + 1e-5)
        s1, s2 = steps(state["0.weight"]), steps(state["2.weight"])
        xa = np.abs(x.numpy().astype(np.float64))
        bound = (np.abs(w2_q) @ (s1 @ xa.T)).T + (s2 @ np.abs(h).T).T + 1e-4 * np.abs(y).max()
        assert np.all(np.abs(y_q - y) <= bound), np.max(np.abs(y_q - y) / bound)
        relative = np.linalg.norm(y_q - y) / np.linalg.norm(y)
        assert 0 < relative < worst
        print(f"int{bits}: output relative error {relative:.2e}, "
              f"max |dy| / bound {np.max(np.abs(y_q - y) / bound):.2f}")


def test_the_walkthrough_table_is_what_the_commands_print(tmp_path):
    """docs/checkpoints.md shows the README's main job's table: it must be what the commands print."""
    cli("demo-checkpoint", tmp_path / "mlp.safetensors")
    out = cli("quantize-checkpoint", tmp_path / "mlp.safetensors", tmp_path / "mlp-int4.safetensors", "--bits", "4",
              "--block-size", "128", "--skip-small", "4096").stdout
    with open(os.path.join(ROOT, "docs", "checkpoints.md")) as f:
        page = f.read()
    table = page[page.index("| tensor |"):page.index("\n```", page.index("| tensor |"))]
    assert table.strip() == out[out.index("| tensor |"):].strip()
