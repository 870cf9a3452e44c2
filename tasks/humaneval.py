"""
HumanEval (Chen et al., 2021): 164 Python functions to complete, graded by running their unit tests.

Design choices:
- the prompt is the function signature + docstring; the reference reply is prompt + canonical solution
- a model's reply is cleaned (a ```python fenced block is taken if present), the prompt's imports are put in
  front, then the task's `check(entry_point)` runs it inside `nanochat.execution`'s sandbox; pass = no error
"""
import re

from tasks.common import Task, load_hub_parquet

REPO = "openai/openai_humaneval"
FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_program(completion):
    """The code in a reply: the first fenced block if there is one, else the reply itself."""
    m = FENCE_RE.search(completion)
    return m.group(1) if m else completion


def extract_imports(prompt):
    return "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))


class HumanEval(Task):
    def __init__(self, timeout=3.0, **kwargs):
        super().__init__(**kwargs)
        self.timeout = timeout
        self.ds = load_hub_parquet(REPO, "openai_humaneval/test-00000-of-00001.parquet")

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]},
            ],
            "task_id": row["task_id"],
            "entry_point": row["entry_point"],
            "test": row["test"],
        }

    def build_program(self, conversation, completion):
        code = extract_program(completion)
        imports = extract_imports(conversation["messages"][0]["content"])
        return "\n\n".join([imports, code, conversation["test"], f"check({conversation['entry_point']})"])

    def evaluate(self, conversation, assistant_response):
        from nanochat.execution import execute_code
        result = execute_code(self.build_program(conversation, assistant_response), timeout=self.timeout)
        return int(result.success)
