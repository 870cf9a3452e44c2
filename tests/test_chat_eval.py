"""chat_eval: letter-logit scoring, generative grading (HumanEval via the sandbox), ChatCORE, and end to end."""
import math

import torch

from scripts import chat_eval

SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
            "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]


class ByteChatTok:
    """Bytes are tokens 0..255, then the chat specials: enough of the tokenizer API for chat_eval and Engine."""
    def encode_special(self, s):
        return 256 + SPECIALS.index(s)

    def get_bos_token_id(self):
        return 256

    def encode(self, text, prepend=None, append=None):
        return ([prepend] if prepend is not None else []) + list(text.encode()) + ([append] if append else [])

    def decode(self, ids):
        return b"".join(bytes([i]) if i < 256 else SPECIALS[i - 256].encode() for i in ids).decode("utf-8", "replace")

    def render_for_completion(self, conv):
        ids = [256]
        for m in conv["messages"][:-1]:
            ids += [self.encode_special("<|user_start|>")] + self.encode(m["content"]) + [self.encode_special("<|user_end|>")]
        return ids + [self.encode_special("<|assistant_start|>")]


class Always(torch.nn.Module):
    """Logits that always prefer one byte (e.g. the letter 'B')."""
    def __init__(self, byte):
        super().__init__()
        self.byte = byte
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"sequence_len": 128})()

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 320)
        logits[..., self.byte] = 1.0
        return logits


class ListTask:
    """A categorical task over hand-made items."""
    eval_type = "categorical"

    def __init__(self, answers):
        self.items = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}],
                       "letters": ["A", "B", "C", "D"]} for i, a in enumerate(answers)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def evaluate(self, conv, reply):
        return int(reply == conv["messages"][-1]["content"])


def test_letter_logits_pick_the_argmax_letter():
    task = ListTask(["B", "A", "B", "D", "B"])
    acc = chat_eval.run_chat_eval(task, Always(ord("B")), ByteChatTok(), batch_size=2)
    assert math.isclose(acc, 3 / 5)
    # a byte that is not a letter never wins: only the letters' logits are compared (all tie -> "A", 1 of 5)
    assert math.isclose(chat_eval.run_chat_eval(task, Always(ord("z")), ByteChatTok()), 1 / 5)


def tiny_gpt(seq=256):
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(sequence_len=seq, vocab_size=320, n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
    m.init_weights()
    return m


def test_batching_does_not_change_answers(hub_mirror, base_dir):
    from tasks.arc import ARC
    task, model, tok = ARC("ARC-Easy", "test"), tiny_gpt(), ByteChatTok()
    a1 = chat_eval.run_chat_eval(task, model, tok, batch_size=1, max_problems=12)
    a8 = chat_eval.run_chat_eval(task, model, tok, batch_size=8, max_problems=12)
    assert a1 == a8 and 0.0 <= a1 <= 1.0


class CannedEngine:
    """Replies with a fixed function of the prompt: stands in for sampling so grading can be checked exactly."""
    def __init__(self, model, tok, reply_for):
        self.model, self.tok, self.reply_for = model, tok, reply_for

    def generate_batch(self, tokens, num_samples=1, **kw):
        reply = self.tok.encode(self.reply_for(self.tok.decode(tokens)))
        return [list(tokens) + reply for _ in range(num_samples)], None


def test_humaneval_graded_in_the_sandbox(hub_mirror, base_dir):
    from tasks.humaneval import HumanEval
    task, tok = HumanEval(), ByteChatTok()
    model = tiny_gpt(seq=2048)
    by_prompt = {c["messages"][0]["content"]: c["messages"][1]["content"] for c in (task[i] for i in range(3))}

    def solve(prompt_text):
        return next(sol for p, sol in by_prompt.items() if p.strip()[-100:] in prompt_text)
    good = chat_eval.run_chat_eval(task, model, tok, CannedEngine(model, tok, solve), max_problems=3)
    bad = chat_eval.run_chat_eval(task, model, tok, CannedEngine(model, tok, lambda p: "def nope(): pass"),
                                  max_problems=3)
    assert good == 1.0 and bad == 0.0


def test_gsm8k_real_engine_runs(hub_mirror, base_dir):
    from nanochat.engine import Engine
    from tasks.gsm8k import GSM8K
    model, tok = tiny_gpt(), ByteChatTok()
    acc = chat_eval.run_chat_eval(GSM8K("main", "test"), model, tok, Engine(model, tok), max_problems=2,
                                  max_new_tokens=16)
    assert acc == 0.0                                   # a random byte model does not solve GSM8K


def test_chatcore():
    assert chat_eval.chatcore({"ARC-Easy": 0.25, "GSM8K": 0.0}) == 0.0
    assert math.isclose(chat_eval.chatcore({"MMLU": 0.4, "HumanEval": 0.1}), ((0.4 - 0.25) / 0.75 + 0.1) / 2)


def test_end_to_end_on_tiny_checkpoint(tiny_base_checkpoint):
    """The real CLI on the session's depth-2 checkpoint (the base one: the same code path as -i sft, and it does
    not need the mid/SFT stages to have run): one categorical, two generative tasks (one through the sandbox)."""
    from helpers import run_script
    out = run_script("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy|GSM8K|HumanEval", "--max-problems", "3",
                     "--max-new-tokens", "16", "--device-type", "cpu",
                     env={"NANOCHAT_BASE_DIR": str(tiny_base_checkpoint)})
    assert "ChatCORE" in out.stdout
    for name in ("ARC-Easy", "GSM8K", "HumanEval"):
        assert f"| {name} |" in out.stdout
    report = (tiny_base_checkpoint / "report").glob("*chat-evaluation-base*")
    assert any(report)


def test_two_gloo_processes_score_like_one(tiny_base_checkpoint):
    # problems are split rank::world and the counts all-reduced (greedy decoding): the same table as one process
    from helpers import run_script, run_torchrun
    args = ["-i", "base", "-a", "ARC-Easy|GSM8K", "--max-problems", "10", "--max-new-tokens", "8", "--device-type", "cpu"]
    tables = []
    for launch in (run_script, run_torchrun):
        out = launch("scripts.chat_eval", *args, env={"NANOCHAT_BASE_DIR": str(tiny_base_checkpoint)})
        out = out if isinstance(out, str) else out.stdout
        tables.append([line for line in out.splitlines() if line.startswith(("| ARC-Easy |", "| GSM8K |", "ChatCORE"))])
    assert tables[0] == tables[1] and len(tables[0]) == 3, tables
    arc = float(tables[0][0].split("|")[2])
    assert 0 < arc < 1, tables[0]                          # a score that losing a rank's problems would change
