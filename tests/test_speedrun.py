"""speedrun.sh: tier selection, and the smoke tier end to end (every stage, a few steps) on the offline mirror."""
import os
import subprocess
import time

import pytest

from helpers import HAVE_SHARED, REPO_ROOT, SHARED_DATA, SKIP_NO_SHARED

SCRIPT = os.path.join(REPO_ROOT, "speedrun.sh")
SMOKE_BUDGET_S = 300      # the budget on an idle 2-core machine
SMOKE_TIMEOUT_S = 1500    # what the test tolerates on a loaded one before it calls the run hung


def run(env, timeout=60):
    return subprocess.run(["bash", SCRIPT], cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


def test_unknown_tier_is_refused(tmp_path):
    proc = run({"TIER": "d99", "NANOCHAT_BASE_DIR": str(tmp_path), "SKIP_SETUP": "1"})
    assert proc.returncode == 2 and "unknown TIER" in proc.stderr


def test_gpu_tier_without_gpu_is_refused(tmp_path):
    if subprocess.run("command -v nvidia-smi", shell=True, capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    proc = run({"TIER": "d20", "NANOCHAT_BASE_DIR": str(tmp_path), "SKIP_SETUP": "1"})
    assert proc.returncode == 2 and "needs CUDA GPUs" in proc.stderr


@pytest.mark.parametrize("ngpu, tier", [(0, "cpu"), (1, "d12"), (4, "d12"), (8, "d20")])
def test_tier_follows_the_gpu_count(tmp_path, ngpu, tier):
    # a stand-in nvidia-smi that lists `ngpu` cards; DRY_RUN prints the plan and runs nothing
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n" + "echo 'NVIDIA H100 80GB HBM3'\n" * ngpu)
    fake.chmod(0o755)
    proc = run({"DRY_RUN": "1", "NANOCHAT_BASE_DIR": str(tmp_path / "base"),
                "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout.splitlines()[-1]
    assert plan.startswith(f"speedrun: DRY_RUN tier={tier} ") and f"nproc={max(1, ngpu)}" in plan, proc.stdout
    assert ("TIER=d20 runs the series' model" in proc.stdout) == (tier == "d12")
    assert not (tmp_path / "base" / "speedrun_timings.tsv").exists()      # nothing ran


def test_a_second_run_skips_what_the_first_finished(tmp_path):
    # the pipeline's logic with a stand-in python that records each command: a rerun skips finished stages, a
    # changed command reruns from its stage on, FORCE=1 reruns everything
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    fake.chmod(0o755)
    base = tmp_path / "base"
    env = {"TIER": "smoke", "SKIP_SETUP": "1", "PYTHON": str(fake), "NANOCHAT_BASE_DIR": str(base),
           "HF_ENDPOINT": "http://127.0.0.1:9"}

    def stages_run(**extra):
        calls.write_text("")
        proc = run({**env, **extra})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return [line.split()[1] for line in calls.read_text().splitlines() if line.startswith("-m scripts.")]

    first = stages_run()
    assert first[:3] == ["scripts.tok_train", "scripts.tok_eval", "scripts.base_train"] and len(first) == 11
    assert stages_run() == []                                          # everything was done
    timings = (base / "speedrun_timings.tsv").read_text()
    assert timings.count("(earlier run)") == 12, timings               # data + the 11 above
    assert stages_run(WANDB_RUN="x") == first[2:]                      # base_train's command changed: from there on
    assert stages_run(FORCE="1") == first


@pytest.mark.slow
def test_smoke_tier_end_to_end(tmp_path):
    if not HAVE_SHARED:
        pytest.skip(SKIP_NO_SHARED)
    base = tmp_path / "base"
    env = {"TIER": "smoke", "SKIP_SETUP": "1", "NANOCHAT_BASE_DIR": str(base),
           "OFFLINE_MIRROR": os.path.join(SHARED_DATA, "hf-mirror"),
           "TIKTOKEN_CACHE_DIR": os.path.join(SHARED_DATA, "tiktoken_cache")}
    t0 = time.time()
    proc = run(env, timeout=SMOKE_TIMEOUT_S)
    elapsed = time.time() - t0
    assert proc.returncode == 0, f"speedrun failed\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    # every stage ran, in order, and was timed
    stages = [line.split("\t")[0] for line in (base / "speedrun_timings.tsv").read_text().splitlines()]
    expected = ["data", "tok_train", "base_train", "base_loss", "base_eval", "mid_train", "chat_eval_mid",
                "chat_sft", "chat_eval_sft", "chat_rl", "chat_eval_rl"]
    assert [s for s in stages if s != "tok_eval"] == expected
    # the report card: system info, the stages' sections, the speedrun's own timing table
    report = (base / "report" / "report.md").read_text()
    for heading in ("# nanochat report card", "## Tokenizer training", "## Base model training", "## Midtraining",
                    "## Chat SFT", "## Chat RL", "## Speedrun"):
        assert heading in report, f"report.md lacks {heading!r}"
    for ckpt in ("base_checkpoints", "mid_checkpoints", "chatsft_checkpoints", "chatrl_checkpoints"):
        assert (base / ckpt / "d2").is_dir()
    print(f"smoke tier took {elapsed:.0f}s (budget {SMOKE_BUDGET_S}s on an idle 2-core machine)")
    if os.environ.get("NANOCHAT_STRICT_TIMING"):
        assert elapsed <= SMOKE_BUDGET_S
