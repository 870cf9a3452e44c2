"""
MMLU (Hendrycks et al., 2021): 57 subjects of four-way multiple choice, from `cais/mmlu` on the hub.

Design choices:
- subset "all" has splits test / validation / dev / auxiliary_train; subset "auxiliary_train" (split "train")
  nests each row under a `train` column, which `datasets.map` flattens
- the assistant's answer is a single letter, so the task is graded categorically from the answer-letter logits
"""
from tasks.common import Task, render_mc, load_hub_parquet

REPO = "cais/mmlu"


class MMLU(Task):
    letters = ("A", "B", "C", "D")

    def __init__(self, subset="all", split="test", **kwargs):
        super().__init__(**kwargs)
        assert subset in ("all", "auxiliary_train"), f"MMLU subset {subset!r}: use 'all' or 'auxiliary_train'"
        if subset == "auxiliary_train":
            assert split == "train", "MMLU auxiliary_train only has a 'train' split"
            ds = load_hub_parquet(REPO, "auxiliary_train/train-00000-of-00001.parquet")
            ds = ds.map(lambda row: row["train"], remove_columns=["train"])
        else:
            assert split in ("test", "validation", "dev", "auxiliary_train"), f"MMLU split {split!r}"
            ds = load_hub_parquet(REPO, f"all/{split}-00000-of-00001.parquet")
        self.subset, self.split, self.ds = subset, split, ds

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        letters = list(self.letters[: len(row["choices"])])
        answer = letters[row["answer"]]
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, row["choices"])},
                {"role": "assistant", "content": answer},
            ],
            "subject": row["subject"],  # handy for per-subject breakdowns
            "letters": letters,         # chat_eval restricts the logits to these
        }

    def evaluate(self, conversation, assistant_response):
        return int(assistant_response.strip() == conversation["messages"][-1]["content"])
