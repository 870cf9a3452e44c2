"""
GSM8K (Cobbe et al., 2021): grade-school maths word problems with worked answers, from `openai/gsm8k`.

Design choices:
- the worked answers carry calculator annotations `<<48/2=24>>`; we turn each one into a python tool call
  (`{"type": "python", "text": "48/2"}`) followed by its output (`{"type": "python_output", "text": "24"}`),
  so the model learns to use the calculator tool at training time and the engine can run it at inference time
- the final answer follows `####`; grading extracts the number after the last `####` in the reply (commas
  dropped) and compares it with the reference
"""
import re

from tasks.common import Task, load_hub_parquet

REPO = "openai/gsm8k"
ANSWER_RE = re.compile(r"####\s*(-?[0-9][0-9.,]*)")
CALC_RE = re.compile(r"<<([^<>]*?)=([^<>]*?)>>")


def extract_answer(text):
    """The number after the last `####`, normalised ("1,000." -> "1000"); None if there is none."""
    found = ANSWER_RE.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


def answer_to_parts(answer):
    """Split a GSM8K worked answer into text / python / python_output parts at the `<<expr=result>>` marks."""
    parts, pos = [], 0
    for m in CALC_RE.finditer(answer):
        if m.start() > pos:
            parts.append({"type": "text", "text": answer[pos:m.start()]})
        parts.append({"type": "python", "text": m.group(1)})
        parts.append({"type": "python_output", "text": m.group(2)})
        pos = m.end()
    if pos < len(answer):
        parts.append({"type": "text", "text": answer[pos:]})
    return parts


class GSM8K(Task):
    def __init__(self, subset="main", split="test", **kwargs):
        super().__init__(**kwargs)
        assert subset == "main", "only the 'main' GSM8K subset is supported ('socratic' is not mirrored)"
        assert split in ("train", "test"), f"GSM8K split {split!r}"
        self.subset, self.split = subset, split
        self.ds = load_hub_parquet(REPO, f"{subset}/{split}-00000-of-00001.parquet")

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        return {"messages": [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": answer_to_parts(row["answer"])},
        ]}

    def evaluate(self, conversation, assistant_response):
        parts = conversation["messages"][-1]["content"]
        reference = extract_answer("".join(p["text"] for p in parts if p["type"] == "text"))
        predicted = extract_answer(assistant_response)
        return int(predicted is not None and predicted == reference)
