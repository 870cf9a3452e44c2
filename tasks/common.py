"""
The shape every task shares: a dataset of conversations, sliceable, mixable, and able to grade an answer.

Design choices:
- a task is a random-access list of conversations `{"messages": [{"role", "content"}, ...]}`; slicing
  (`start`, `stop`, `step`) is a view, so `GSM8K(split="train", start=0, step=8)` shards work across 8 ranks
- `eval_type` says how a model is graded: "categorical" (pick one letter, read from logits) or "generative"
  (sample a reply, then `evaluate(conversation, reply)` checks it)
- `TaskMixture` interleaves several tasks in a fixed, seeded order (so a training run is reproducible and every
  batch sees a blend); `TaskSequence` plays them back to back (for curricula)
- data files come through `nanochat.download.download_hub_file` (HF_ENDPOINT, the loopback mirror offline) and
  are read with HF `datasets`, which gives shuffling, slicing and `map` for free
"""
import random

LETTERS = "ABCDEFGHIJ"


class Task:
    """A sliceable list of conversations. Subclasses define `num_examples`, `get_example` and `eval_type`."""

    def __init__(self, start=0, stop=None, step=1):
        assert start >= 0 and step >= 1, f"bad slice start={start} step={step}"
        assert stop is None or stop >= start, f"bad slice start={start} stop={stop}"
        self.start, self.stop, self.step = start, stop, step

    @property
    def eval_type(self):
        raise NotImplementedError

    def num_examples(self):
        raise NotImplementedError

    def get_example(self, index):
        raise NotImplementedError

    def __len__(self):
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, -(-(stop - self.start) // self.step))  # ceil((stop - start) / step)

    def __getitem__(self, i):
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{type(self).__name__} index {i} out of range ({len(self)})")
        return self.get_example(self.start + i * self.step)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def evaluate(self, conversation, assistant_response):
        """1 if the reply is right, else 0 (int, so accuracies are plain means)."""
        raise NotImplementedError

    def reward(self, conversation, assistant_response):
        """RL reward; by default the 0/1 correctness as a float."""
        return float(self.evaluate(conversation, assistant_response))


class TaskMixture(Task):
    """Several tasks interleaved in one seeded random order. Repeat a task in the list to oversample it."""

    def __init__(self, tasks, seed=42, **kwargs):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        self.index_map = [(t, j) for t, task in enumerate(self.tasks) for j in range(len(task))]
        random.Random(seed).shuffle(self.index_map)

    @property
    def eval_type(self):
        types = {t.eval_type for t in self.tasks}
        return types.pop() if len(types) == 1 else "mixed"

    def num_examples(self):
        return len(self.index_map)

    def get_example(self, index):
        t, j = self.index_map[index]
        return self.tasks[t][j]


class TaskSequence(Task):
    """Several tasks one after the other, in the given order."""

    def __init__(self, tasks, **kwargs):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        self.lengths = [len(t) for t in self.tasks]

    @property
    def eval_type(self):
        types = {t.eval_type for t in self.tasks}
        return types.pop() if len(types) == 1 else "mixed"

    def num_examples(self):
        return sum(self.lengths)

    def get_example(self, index):
        for task, n in zip(self.tasks, self.lengths):
            if index < n:
                return task[index]
            index -= n
        raise IndexError(index)


def render_mc(question, letters, choices):
    """A multiple-choice prompt whose answer is a single letter token.

    Each choice is written `- text=A`: the letter sits right after '=' (no space before it), the same context
    the answer letter has when the model replies, which helps small models tie the letter to the choice.
    """
    assert len(letters) == len(choices), (letters, choices)
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    lines.append("\nRespond only with the letter of the correct answer.")
    return "\n".join(lines)


def load_hub_parquet(repo, paths):
    """Download parquet files of a hub dataset (through the project's downloader) and open them with `datasets`."""
    from datasets import load_dataset
    from nanochat.download import download_hub_file
    if isinstance(paths, str):
        paths = [paths]
    local = [download_hub_file(repo, p) for p in paths]
    return load_dataset("parquet", data_files=local, split="train")
