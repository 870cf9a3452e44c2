"""
CustomJSON: conversations from a local (or downloaded) .jsonl file, one JSON list of messages per line.

Design choices:
- used for the identity conversations that teach the model its name and maker; upstream fetches them from a
  public URL, offline runs point `NANOCHAT_IDENTITY_PATH` at a local copy
- `CustomJSON(filepath=...)` takes a path or an http(s) URL (downloaded once through `nanochat.download`)
- every line is validated when loaded (user/assistant alternation, string contents), so a bad file fails early
"""
import json
import os

from tasks.common import Task

IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"


def _materialize(path_or_url):
    if path_or_url.startswith(("http://", "https://")):
        from nanochat.common import get_base_dir
        from nanochat.download import download_url
        dest = os.path.join(get_base_dir(), "custom_json", os.path.basename(path_or_url.split("?")[0]))
        return download_url(path_or_url, dest)
    return path_or_url


def identity_conversations_path():
    """`NANOCHAT_IDENTITY_PATH` if set, else `<base>/identity_conversations.jsonl` (downloaded if missing)."""
    env = os.environ.get("NANOCHAT_IDENTITY_PATH")
    if env:
        return _materialize(env)
    from nanochat.common import get_base_dir
    from nanochat.download import download_url
    return download_url(IDENTITY_URL, os.path.join(get_base_dir(), "identity_conversations.jsonl"))


class CustomJSON(Task):
    def __init__(self, filepath=None, **kwargs):
        super().__init__(**kwargs)
        self.filepath = _materialize(filepath) if filepath else identity_conversations_path()
        self.conversations = []
        with open(self.filepath, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                messages = json.loads(line)
                if isinstance(messages, dict):  # also accept {"messages": [...]}
                    messages = messages["messages"]
                assert len(messages) >= 2, f"{self.filepath}:{lineno}: needs at least two messages"
                for i, m in enumerate(messages):
                    want = "user" if i % 2 == 0 else "assistant"
                    assert m["role"] == want, f"{self.filepath}:{lineno} message {i}: expected {want}"
                    assert isinstance(m["content"], str), f"{self.filepath}:{lineno} message {i}: content"
                self.conversations.append(messages)

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return {"messages": [dict(m) for m in self.conversations[index]]}
