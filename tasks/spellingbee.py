"""
SpellingBee: synthetic "how many <letter> are in <word>?" questions, the classic tokenizer blind spot.

Design choices:
- a model sees tokens, not letters, so counting letters is hard; the reference answer spells the word out one
  letter at a time with a running count, then checks itself with a python tool call, then gives `#### n`
- examples are generated from the index with a seeded RNG (train and test use different seeds), so the task is
  infinite-ish, reproducible and needs no download; the word list is built in, or a file of one word per line
  (`words=` or env `NANOCHAT_WORDS_PATH`)
- graded like GSM8K: the number after `####`
"""
import os
import random

from tasks.common import Task
from tasks.gsm8k import extract_answer

WORDS = """
apple banana strawberry cherry grape orange lemon mango papaya pineapple raspberry blueberry coconut avocado
tomato potato carrot broccoli cucumber pepper onion garlic spinach lettuce cabbage pumpkin zucchini celery
elephant giraffe kangaroo penguin dolphin octopus squirrel rabbit tiger monkey buffalo crocodile hippopotamus
butterfly mosquito caterpillar grasshopper ladybug scorpion jellyfish seahorse starfish flamingo peacock
mississippi tennessee massachusetts connecticut california philadelphia minneapolis albuquerque
necessary occasion accommodate committee embarrass millennium parallel questionnaire recommend separate
bookkeeper balloon coffee cookie bubble puzzle jazz pizza dizzy fizz buzz hello goodbye success address
computer keyboard monitor printer program function variable algorithm database network internet software
language transformer attention gradient optimizer tokenizer embedding parameter inference training
mountain river ocean valley desert forest island volcano glacier canyon meadow prairie waterfall horizon
teacher student library notebook pencil eraser backpack classroom homework science history geography
banana bandana cinnamon vanilla chocolate caramel marshmallow lollipop spaghetti macaroni broccoli
umbrella raincoat sweater trousers pajamas sneakers necklace bracelet earring sunglasses
happiness sadness excitement curiosity patience kindness friendship courage wisdom freedom
assessment possession aggressive unnecessary address mattress princess congress fortress progress
letter summer little bottle middle apple coffee tunnel carrot yellow pillow follow arrow sorrow
alphabet bookshelf quizzical rhythm syzygy xylophone zeppelin jukebox quartz sphinx
""".split()
WORDS = sorted(set(WORDS))

TEMPLATES = [
    "How many {l} are in the word {w}?",
    "How many times does the letter {l} appear in {w}?",
    "Count the number of '{l}' in '{w}'.",
    "In the word \"{w}\", how many {l}'s are there?",
    "how many {l} in {w}",
    "What is the count of the letter {l} in the word {w}?",
]
SEEDS = {"train": 42, "test": 10_000_019}


def _load_words(words):
    path = words or os.environ.get("NANOCHAT_WORDS_PATH")
    if path is None:
        return WORDS
    with open(path, encoding="utf-8") as f:
        return sorted({line.strip().lower() for line in f if line.strip().isalpha()})


def spell_out_parts(word, letter):
    """The reference reply: spell, keep a running count, verify with python, answer after ####."""
    count, lines = 0, []
    for i, ch in enumerate(word, 1):
        if ch == letter:
            count += 1
            lines.append(f"{i}:{ch} <- match, count={count}")
        else:
            lines.append(f"{i}:{ch}")
    spelled = "\n".join(lines)
    return [
        {"type": "text", "text": f"Let me spell '{word}' one letter at a time and count '{letter}':\n{spelled}\n"
                                 f"That gives {count}. Let me double-check with Python.\n\n"},
        {"type": "python", "text": f"'{word}'.count('{letter}')"},
        {"type": "python_output", "text": str(word.count(letter))},
        {"type": "text", "text": f"\n\nThe letter '{letter}' appears {count} time{'s' if count != 1 else ''} "
                                 f"in '{word}'.\n\n#### {count}"},
    ]


class SpellingBee(Task):
    def __init__(self, size=1000, split="train", words=None, **kwargs):
        super().__init__(**kwargs)
        assert split in SEEDS, f"SpellingBee split {split!r}"
        self.size, self.split = size, split
        self.words = _load_words(words)

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(SEEDS[self.split] + index)
        word = rng.choice(self.words)
        # mostly ask about a letter that is there; sometimes one that is not (answer 0)
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        question = rng.choice(TEMPLATES).format(l=letter, w=word)
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": spell_out_parts(word, letter)},
            ],
            "word": word,
            "letter": letter,
            "answer": word.count(letter),
        }

    def evaluate(self, conversation, assistant_response):
        predicted = extract_answer(assistant_response)
        return int(predicted is not None and predicted == str(conversation["answer"]))
