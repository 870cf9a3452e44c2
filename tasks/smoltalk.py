"""
SmolTalk: general multi-turn chat data for midtraining and SFT (default `HuggingFaceTB/smol-smoltalk`).

Design choices:
- the dataset name comes from `NANOCHAT_CHAT_DATASET` so offline runs can point at the SmolTalk-shaped fixture
  `nanochat-fixtures/chat-mix` (same file layout: `data/{train,test}-00000-of-00001.parquet`, `messages`)
- rows are shuffled once with a fixed seed, so any prefix is a fair sample of the whole
- conversations are checked on load: an optional system message, then strictly alternating user/assistant
"""
import os

from tasks.common import Task, load_hub_parquet

DEFAULT_DATASET = "HuggingFaceTB/smol-smoltalk"


def chat_dataset_name():
    return os.environ.get("NANOCHAT_CHAT_DATASET") or DEFAULT_DATASET


class SmolTalk(Task):
    def __init__(self, split="train", dataset=None, seed=42, **kwargs):
        super().__init__(**kwargs)
        assert split in ("train", "test"), f"SmolTalk split {split!r}"
        self.dataset = dataset or chat_dataset_name()
        self.split = split
        self.ds = load_hub_parquet(self.dataset, f"data/{split}-00000-of-00001.parquet").shuffle(seed=seed)

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        messages = [{"role": m["role"], "content": m["content"]} for m in self.ds[index]["messages"]]
        body = messages[1:] if messages and messages[0]["role"] == "system" else messages
        assert len(body) >= 2, f"{self.dataset}[{index}]: a conversation needs a user and an assistant turn"
        for i, m in enumerate(body):
            want = "user" if i % 2 == 0 else "assistant"
            assert m["role"] == want, f"{self.dataset}[{index}] turn {i}: expected {want}, got {m['role']}"
        return {"messages": messages}
