"""
ARC (Clark et al., 2018): grade-school science questions, "ARC-Easy" and "ARC-Challenge", from `allenai/ai2_arc`.

Design choices:
- a few ARC items label their choices 1-4 instead of A-D; we re-letter by position (A, B, C, ...) so every item
  is answered with one capital letter, like MMLU
- graded categorically from the answer-letter logits
"""
from tasks.common import Task, LETTERS, render_mc, load_hub_parquet

REPO = "allenai/ai2_arc"


class ARC(Task):
    def __init__(self, subset="ARC-Easy", split="test", **kwargs):
        super().__init__(**kwargs)
        assert subset in ("ARC-Easy", "ARC-Challenge"), f"ARC subset {subset!r}"
        assert split in ("train", "validation", "test"), f"ARC split {split!r}"
        self.subset, self.split = subset, split
        self.ds = load_hub_parquet(REPO, f"{subset}/{split}-00000-of-00001.parquet")

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        texts, labels = row["choices"]["text"], row["choices"]["label"]
        letters = list(LETTERS[: len(texts)])
        answer = letters[labels.index(row["answerKey"])]
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, texts)},
                {"role": "assistant", "content": answer},
            ],
            "letters": letters,
        }

    def evaluate(self, conversation, assistant_response):
        return int(assistant_response.strip() == conversation["messages"][-1]["content"])
