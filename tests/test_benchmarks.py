"""Each benchmark's documented smoke command runs on a CPU, so the scripts that produce benchmarks/RESULTS.md do
not rot between GPU sessions. The commands are read from the scripts' own docstrings (the line marked `smoke`),
so the documentation is what gets tested."""
import ast
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def smoke_command(script):
    """The `python -m benchmarks...` line of the script's docstring whose comment says smoke, joined across
    backslash continuations."""
    with open(os.path.join(BENCH, script)) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    text = re.sub(r"\\\s*\n\s*", " ", doc)
    for line in text.splitlines():
        if line.strip().startswith("python -m benchmarks.") and "smoke" in line:
            return shlex.split(line.split("#")[0])
    raise AssertionError(f"{script}: no smoke command in its docstring")


def run(argv):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def json_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("script", ["bench_gpt.py", "bench_infer.py"])
def test_smoke_command_runs(script):
    assert run(smoke_command(script)).strip()


def test_bench_train_smoke_measures_a_step_and_profiles_it():
    recs = json_lines(run(smoke_command("bench_train.py")))
    steps = [r for r in recs if r["what"] == "train_step"]
    assert steps and all("error" not in r and r["tok_per_s"] > 0 for r in steps), steps
    prof = [r for r in recs if r["what"] == "profile"]
    assert len(prof) == len(steps) and prof[0]["by_kind_ms"]["matmul"] > 0, prof


@pytest.mark.parametrize("name, kind", [
    # kernel names as an H100 profile of the training step shows them
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0", "attention"),
    ("triton_red_fused__scaled_dot_product_cudnn_attention_backward_add_mul_3", "inductor"),
    ("triton_poi_fused__to_copy_add_mul_rms_norm_0", "inductor"),
    ("_softcap_ce_fp8_kernel", "ours (Triton)"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "aten elementwise"),
    ("Memset (Device)", "copies"),
])
def test_profile_kinds(name, kind):
    from benchmarks.step_profile import _our_kernels, kind_of
    assert kind_of(name, _our_kernels()) == kind


def test_bench_kernels_smoke_times_every_kernel_against_its_peer():
    out = run(smoke_command("bench_kernels.py"))
    rows = [r for r in json_lines(out) if r["what"] == "kernel"]
    assert [r["kernel"] for r in rows] == ["loss", "mlp_act", "mlp_grad", "transpose"]
    for r in rows:
        assert r["ours_ms"] > 0 and r["eager_ms"] > 0 and r["eager_ratio"] > 0, r
        assert r["codes_differ"] == 0, r            # on a CPU "ours" is the PyTorch path itself
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 6 and table[0].startswith("| kernel |")   # the markdown table: header, rule, a row each


def test_bench_tokenizer_smoke_trains_and_encodes_with_every_library():
    from benchmarks.bench_tokenizer import PROSE
    # reads the prose fixture straight from disk (no hub download, tiktoken is built from our own ranks)
    if not glob.glob(os.path.join(PROSE, "shard_*.parquet")):
        pytest.skip(f"needs the prose fixture of ../shared/data under {os.path.abspath(PROSE)}")
    for mod in ("rustbpe", "tokenizers", "tiktoken"):
        pytest.importorskip(mod, reason=f"bench_tokenizer compares against {mod}")
    recs = json_lines(run(smoke_command("bench_tokenizer.py")))
    assert all("error" not in r for r in recs), recs
    train = [r for r in recs if r["what"] == "train"]
    assert train and all(r["hf_over_rustbpe_wall"] > 0 and r["hf_over_rustbpe_cpu"] > 0 for r in train), train
    (py,) = [r for r in recs if r["what"] == "train_python"]
    assert py["python_over_rustbpe"] > 0 and py["identical_merges"] is True, py
    enc = {r["encoder"]: r for r in recs if r["what"] == "encode"}
    assert set(enc) == {"rustbpe", "tiktoken", "HF tokenizers"}
    assert all(r["single_mb_s"] > 0 and r["batch_mb_s"] > 0 for r in enc.values()), enc
