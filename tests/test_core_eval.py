"""CORE per-task logic on hand-made items whose right answer is known, plus the real (offline) bundle."""
import math
import os

import pytest
import torch

from helpers import HAVE_SHARED, SHARED_DATA, SKIP_NO_SHARED
from nanochat import core_eval
from nanochat.core_eval import centered, evaluate_task, item_spans, render_lm, render_mc, render_schema


class ByteTok:
    """Bytes are tokens 0..255, BOS is 256: boundaries are exact, so spans can be checked by hand."""
    def get_bos_token_id(self):
        return 256

    def encode(self, text, prepend=None):
        ids = list(text.encode("utf-8"))
        return ([prepend] if prepend is not None else []) + ids


class Oracle(torch.nn.Module):
    """Knows a set of 'true' texts: after a prefix of one of them, puts all its mass on that text's next byte."""
    def __init__(self, texts, sign=1.0):
        super().__init__()
        self.texts = [t.encode() for t in texts]
        self.sign = sign
        self.training = False

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, 257)
        for b in range(B):
            row = idx[b].tolist()
            for t in range(T):
                # what has been said since the last blank line (few-shot examples come before it), BOS dropped
                prefix = bytes(v for v in row[:t + 1] if v < 256).rsplit(b"\n\n", 1)[-1]
                for text in self.texts:
                    if text.startswith(prefix) and len(text) > len(prefix):
                        logits[b, t, text[len(prefix)]] = 10.0 * self.sign
        return logits


class Uniform(torch.nn.Module):
    def forward(self, idx):
        return torch.zeros(*idx.shape, 257)


MC = [{"query": "Q: 1+1?", "choices": ["3", "2", "11"], "gold": 1},
      {"query": "Q: sky?", "choices": ["blue", "green"], "gold": 0},
      {"query": "Q: cat says?", "choices": ["woof", "moo", "meow"], "gold": 2}]
SCHEMA = [{"context_options": ["The trophy did not fit, the trophy", "The trophy did not fit, the case"],
           "continuation": "was too big.", "gold": 0},
          {"context_options": ["Ann thanked Bea because Ann", "Ann thanked Bea because Bea"],
           "continuation": "had helped her.", "gold": 1}]
LM = [{"context": "The capital of France is", "continuation": "Paris"},
      {"context": "Two plus two is", "continuation": "four"}]


def meta(task_type, k=0, delim=" "):
    return {"task_type": task_type, "num_fewshot": k, "continuation_delimiter": delim}


def test_render_exact_strings():
    ctx, fulls = render_mc(MC[0], "\nAnswer: ", [MC[1]])
    assert ctx == "Q: sky?\nAnswer: blue\n\nQ: 1+1?\nAnswer: "
    assert fulls[1] == ctx + "2"
    assert render_schema(SCHEMA[0], " ", [])[1] == "The trophy did not fit, the case was too big."
    assert render_lm(LM[0], " ", [LM[1]]) == ("Two plus two is four\n\nThe capital of France is ",
                                              ["Two plus two is four\n\nThe capital of France is Paris"])


def test_spans_cover_exactly_the_continuation():
    tok = ByteTok()
    spans = item_spans(tok, "multiple_choice", MC[1], " ", [])
    for (s, start, end), choice in zip(spans, MC[1]["choices"]):
        # the byte context is "Q: sky?" ; the trailing delimiter space is scored with the choice
        assert bytes(s[start:end]).decode() == " " + choice
    spans = item_spans(tok, "schema", SCHEMA[0], " ", [])
    assert all(bytes(s[a:b]).decode().endswith("was too big.") for s, a, b in spans)
    (s, a, b), = item_spans(tok, "language_modeling", LM[0], " ", [])
    assert bytes(s[a:b]).decode() == " Paris"


@pytest.mark.parametrize("task_type,data,texts", [
    ("multiple_choice", MC, [f"{d['query']} {d['choices'][d['gold']]}" for d in MC]),
    ("schema", SCHEMA, [f"{d['context_options'][d['gold']]} {d['continuation']}" for d in SCHEMA]),
    ("language_modeling", LM, [f"{d['context']} {d['continuation']}" for d in LM]),
])
def test_oracle_scores_one_and_anti_oracle_zero(task_type, data, texts):
    tok = ByteTok()
    assert evaluate_task(Oracle(texts), tok, data, "cpu", meta(task_type)) == 1.0
    if task_type != "language_modeling":   # an anti-oracle avoids the right answer wherever it can
        assert evaluate_task(Oracle(texts, sign=-1.0), tok, data, "cpu", meta(task_type)) == 0.0


def test_uniform_model_ties_go_to_the_first_choice():
    # equal mean losses: argmin picks choice 0, so accuracy = share of items whose gold is 0 (1 of 3)
    assert math.isclose(evaluate_task(Uniform(), ByteTok(), MC, "cpu", meta("multiple_choice")), 1 / 3)
    assert evaluate_task(Uniform(), ByteTok(), LM, "cpu", meta("language_modeling")) == 0.0


def test_fewshot_never_includes_the_item_and_crops_from_the_left():
    texts = [f"{d['query']} {d['choices'][d['gold']]}" for d in MC]
    # with 2 shots and a tiny max_len the oracle still wins: the scored end survives the crop
    assert evaluate_task(Oracle(texts), ByteTok(), MC, "cpu", meta("multiple_choice", k=2), max_len=24) == 1.0


def test_centered():
    assert centered(0.25, 0.25) == 0.0 and centered(1.0, 0.25) == 1.0
    assert math.isclose(centered(0.412458, 0.25), 0.216611, abs_tol=1e-6)    # GPT-2's arc_easy row


@pytest.mark.skipif(not HAVE_SHARED, reason=SKIP_NO_SHARED)
def test_offline_bundle_skips_missing_tasks(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE", os.path.join(SHARED_DATA, "eval_bundle.zip"))
    tasks = core_eval.load_core_tasks()
    assert len(tasks) == 22
    missing = {t["label"] for t in tasks if not t["present"]}
    assert missing == {"hellaswag", "hellaswag_zeroshot", "squad", "coqa"}
    copa = next(t for t in tasks if t["label"] == "copa")
    assert copa["random_baseline"] == 0.5 and copa["task_type"] == "multiple_choice"
    # a tiny random GPT with the byte tokenizer over every present task, 2 items each
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=128, vocab_size=320, n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
    model.init_weights()
    with pytest.warns(UserWarning, match="hellaswag"):
        out = core_eval.evaluate_core(model, ByteTok(), "cpu", max_per_task=2, verbose=False)
    assert len(out["tasks_covered"]) == 18 and set(out["tasks_missing"]) == missing
    assert all(0.0 <= a <= 1.0 for a in out["results"].values())
    assert math.isclose(out["core_metric"], sum(out["centered_results"].values()) / 18)


def test_base_eval_script_on_tiny_checkpoint(tiny_base_checkpoint):
    from helpers import run_script
    out = run_script("scripts.base_eval", "--max-per-task", "2", "--tasks", "copa,winograd,lambada_openai,squad",
                     "--device-type", "cpu", env={"NANOCHAT_BASE_DIR": str(tiny_base_checkpoint)})
    assert "CORE" in out.stdout and "over 3 tasks" in out.stdout
    assert "squad" in out.stdout                          # named as not covered
    csvs = list((tiny_base_checkpoint / "base_eval").glob("*.csv"))
    assert csvs and "copa" in csvs[0].read_text()


def test_base_eval_on_two_gloo_processes_equals_one(tiny_base_checkpoint, tmp_path):
    # each rank scores every world-th example and the sums are all-reduced: the same table as one process
    from helpers import run_script, run_torchrun
    args = ["--max-per-task", "8", "--tasks", "copa,winograd,lambada_openai", "--device-type", "cpu"]
    csvs = []
    for launch in (run_script, run_torchrun):
        out = launch("scripts.base_eval", *args, env={"NANOCHAT_BASE_DIR": str(tiny_base_checkpoint)})
        out = out if isinstance(out, str) else out.stdout
        assert f"world {1 if launch is run_script else 2}" in out, out[-2000:]
        (csv_path,) = (tiny_base_checkpoint / "base_eval").glob("*.csv")
        csvs.append(csv_path.read_text())
    assert csvs[0] == csvs[1]
    accs = [float(row.split(",")[1]) for row in csvs[0].splitlines()[1:] if not row.startswith("CORE,")]
    assert len(accs) >= 3 and any(0 < a < 1 for a in accs), csvs[0]    # a table that a lost rank would change


@pytest.mark.skipif(not HAVE_SHARED, reason=SKIP_NO_SHARED)
def test_bundle_from_url_and_from_directory(base_dir, monkeypatch, tmp_path):
    """NANOCHAT_EVAL_BUNDLE may be a URL (downloaded once, through nanochat.download) or an unzipped folder."""
    import subprocess
    import sys
    from helpers import free_port, wait_for_port
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", SHARED_DATA], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE", f"http://127.0.0.1:{port}/eval_bundle.zip")
        d = core_eval.eval_bundle_dir()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert d == str(base_dir / "eval_bundle") and os.path.isfile(os.path.join(d, "core.yaml"))
    assert os.path.isfile(base_dir / "eval_bundle.zip")
    assert core_eval.eval_bundle_dir() == d                 # cached: the server is gone, no second download
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE", d)             # a directory is used in place
    assert core_eval.eval_bundle_dir() == d
    assert len(core_eval.load_core_tasks(d)) == 22
