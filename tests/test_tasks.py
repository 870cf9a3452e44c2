"""Task loaders on the offline hub mirror: sizes, rendering, grading, slicing and mixing."""
import json
import os

import pytest

from tasks.common import Task, TaskMixture, TaskSequence, render_mc
from tasks.gsm8k import answer_to_parts, extract_answer
from tasks.spellingbee import SpellingBee


@pytest.fixture(scope="module")
def hub(hub_mirror, tmp_path_factory):
    """One base dir (download cache) for the whole module, so each parquet file is fetched once."""
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(tmp_path_factory.mktemp("tasks-base"))
    yield hub_mirror
    if old is None:
        os.environ.pop("NANOCHAT_BASE_DIR", None)
    else:
        os.environ["NANOCHAT_BASE_DIR"] = old


class Numbers(Task):
    """A toy task: example i is the number i."""
    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n = n

    eval_type = "generative"

    def num_examples(self):
        return self.n

    def get_example(self, i):
        return i


def test_slicing_matches_python_slices():
    for start, stop, step in [(0, None, 1), (3, None, 1), (0, 10, 3), (2, 17, 4), (5, 5, 1), (0, 100, 7)]:
        t = Numbers(20, start=start, stop=stop, step=step)
        assert list(t) == list(range(20))[start:stop:step]
        assert len(t) == len(range(20)[start:stop:step])
    with pytest.raises(IndexError):
        Numbers(5)[5]


def test_rank_sharding_covers_everything_once():
    shards = [list(Numbers(23, start=r, step=4)) for r in range(4)]
    assert sorted(sum(shards, [])) == list(range(23))


def test_mixture_is_deterministic_and_complete():
    a, b = Numbers(5), Numbers(13, start=10)
    m1, m2 = TaskMixture([a, b]), TaskMixture([a, b])
    assert list(m1) == list(m2)                      # same seed, same order
    assert sorted(m1) == [0, 1, 2, 3, 4, 10, 11, 12]
    assert list(m1) != sorted(m1)                    # actually interleaved
    assert list(TaskMixture([a, a])).count(0) == 2   # repeating a task oversamples it


def test_sequence_concatenates():
    assert list(TaskSequence([Numbers(3), Numbers(9, start=7)])) == [0, 1, 2, 7, 8]


def test_render_mc_exact():
    s = render_mc("2+2?", ["A", "B"], ["3", "4"])
    assert s == "Multiple Choice question: 2+2?\n- 3=A\n- 4=B\n\nRespond only with the letter of the correct answer."


def test_gsm8k_parts_and_answers():
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72\n#### 72"
    parts = answer_to_parts(answer)
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text", "python", "python_output", "text"]
    assert parts[1]["text"] == "48/2" and parts[2]["text"] == "24"
    assert "".join(p["text"] for p in parts if p["type"] == "text") == "She sold 48/2 = 24 clips.\nIn all 48+24 = 72\n#### 72"
    assert extract_answer("so #### 1,234.") == "1234"
    assert extract_answer("#### 3 then #### -5") == "-5"
    assert extract_answer("no answer here") is None


def test_spellingbee_is_reproducible_and_correct():
    t, t2 = SpellingBee(50, "train"), SpellingBee(50, "train")
    test = SpellingBee(50, "test")
    assert [c["word"] for c in t] == [c["word"] for c in t2]
    assert [c["word"] for c in t] != [c["word"] for c in test]
    for c in t:
        assert c["answer"] == c["word"].count(c["letter"])
        parts = c["messages"][1]["content"]
        reply = "".join(p["text"] for p in parts)
        assert t.evaluate(c, reply) == 1
        assert t.evaluate(c, f"#### {c['answer'] + 1}") == 0
        assert parts[2]["text"] == str(eval(parts[1]["text"]))   # the tool call's output is what python says


def test_mmlu(hub):
    from tasks.mmlu import MMLU
    t = MMLU("all", "test")
    assert len(t) == 14042 and t.eval_type == "categorical"
    c = t[0]
    assert c["letters"] == ["A", "B", "C", "D"]
    answer = c["messages"][1]["content"]
    assert answer in "ABCD" and t.evaluate(c, answer) == 1 and t.evaluate(c, "Z") == 0
    aux = MMLU("auxiliary_train", "train")
    assert len(aux) == 1218 and aux[0]["messages"][1]["content"] in "ABCD"
    assert len(MMLU("all", "validation", stop=10)) == 10


def test_arc(hub):
    from tasks.arc import ARC
    easy = ARC("ARC-Easy", "test")
    assert len(easy) == 2376 and easy.eval_type == "categorical"
    # every item, including the few with numeric labels, is answered with one of its letters
    for c in ARC("ARC-Challenge", "test", step=50):
        assert c["messages"][1]["content"] in c["letters"]
        assert c["messages"][0]["content"].count("\n- ") == len(c["letters"])


def test_gsm8k(hub):
    from tasks.gsm8k import GSM8K
    t = GSM8K("main", "test")
    assert len(t) == 1319 and t.eval_type == "generative"
    c = t[0]
    assert t.evaluate(c, "blah blah #### 18") == 1       # Janet's ducks: 18 dollars
    assert t.evaluate(c, "#### 17") == 0
    assert any(p["type"] == "python" for p in c["messages"][1]["content"])
    assert len(GSM8K("main", "train")) == 7473


def test_humaneval_through_sandbox(hub):
    from tasks.humaneval import HumanEval
    t = HumanEval()
    assert len(t) == 164
    c = t[0]
    assert t.evaluate(c, c["messages"][1]["content"]) == 1                 # the canonical solution passes
    fenced = "Here you go:\n```python\n" + c["messages"][1]["content"] + "```\n"
    assert t.evaluate(c, fenced) == 1                                       # code is pulled out of fences
    assert t.evaluate(c, c["messages"][0]["content"] + "    return False\n") == 0


def test_smoltalk_fixture(hub):
    from tasks.smoltalk import SmolTalk
    t = SmolTalk("train")
    assert t.dataset == "nanochat-fixtures/chat-mix"
    assert len(t) == 480 and len(SmolTalk("test")) == 50
    for c in t:
        roles = [m["role"] for m in c["messages"] if m["role"] != "system"]
        assert roles[0] == "user" and roles[1] == "assistant"


def test_customjson_path_env_and_url(hub, tmp_path):
    from tasks.customjson import CustomJSON
    t = CustomJSON()                                     # NANOCHAT_IDENTITY_PATH (set by the fixture)
    assert len(t) == 1000
    assert "nanochat" in json.dumps(t[0]).lower()
    small = tmp_path / "two.jsonl"
    small.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]) + "\n")
    assert CustomJSON(filepath=str(small))[0]["messages"][1]["content"] == "yo"
    # a URL goes through the downloader (here: a file the mirror happens to serve)
    url = hub + "/identity.jsonl"
    mirror_file = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hf-mirror", "identity.jsonl")
    assert not os.path.exists(mirror_file)               # we do not write into ../shared; test the 404 path
    from nanochat.download import DownloadError
    with pytest.raises(DownloadError):
        CustomJSON(filepath=url)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]) + "\n")
    with pytest.raises(AssertionError):
        CustomJSON(filepath=str(bad))
