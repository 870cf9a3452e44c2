"""
Compression of our tokenizer vs GPT-2's and GPT-4's (cl100k_base) on several kinds of text.

    python -m scripts.tok_eval

Compression = UTF-8 bytes per token (higher = fewer tokens for the same text = more text fits in a context
window and each training step sees more data). GPT-2/GPT-4 come from tiktoken (offline through
TIKTOKEN_CACHE_DIR); ours from `<base>/tokenizer`. Prints a table and logs it to the report.
Cost: a few seconds.
"""
import argparse

from nanochat.common import print0
from nanochat.report import get_report

# Short samples written for this book, one per kind of text the model will meet.
SAMPLES = {
    "news": (
        "GENEVA, March 3 (Newswire) - Negotiators from 14 countries agreed on Tuesday to extend a fishing-quota "
        "treaty for another five years, ending a dispute that had kept trawlers idle in port since January. "
        "\"Nobody got everything they wanted,\" the chief delegate told reporters, \"but the boats can sail again.\" "
        "Under the deal, catches of cod in the northern zone will fall by 8% while mackerel limits rise slightly."
    ),
    "korean": (
        "토크나이저는 문장을 모델이 이해할 수 있는 작은 조각, 즉 토큰으로 나눕니다. "
        "바이트 수준 BPE는 자주 함께 나타나는 바이트 쌍을 반복해서 합치며 어휘를 만듭니다. "
        "영어 위주의 데이터로 학습한 토크나이저는 한국어 한 글자에 여러 개의 토큰을 쓰기도 합니다. "
        "그래서 같은 내용이라도 한국어 문장은 더 많은 토큰을 차지할 수 있습니다."
    ),
    "code": (
        "import math\n\n\nclass Circle:\n    \"\"\"A circle that knows its area.\"\"\"\n\n"
        "    def __init__(self, radius: float) -> None:\n        if radius < 0:\n"
        "            raise ValueError(f\"negative radius: {radius}\")\n        self.radius = radius\n\n"
        "    def area(self) -> float:\n        return math.pi * self.radius ** 2\n\n\n"
        "for r in range(1, 4):\n    print(r, round(Circle(r).area(), 3))\n"
    ),
    "math": (
        "Let $f(x) = \\sum_{n=0}^{\\infty} \\frac{x^n}{n!}$. Then $f'(x) = f(x)$ and $f(0) = 1$, so "
        "$f(x) = e^x$. For the Gaussian integral, $\\int_{-\\infty}^{\\infty} e^{-x^2}\\,dx = \\sqrt{\\pi}$; "
        "squaring it and switching to polar coordinates gives $\\int_0^{2\\pi}\\int_0^\\infty e^{-r^2} r\\,dr\\,d\\theta = \\pi$. "
        "Check: 3 * 7 = 21, 144 / 12 = 12, 2^10 = 1024, 0.125 + 0.875 = 1.0."
    ),
    "science": (
        "Photosynthesis converts light energy into chemical energy stored in glucose. In the light-dependent "
        "reactions, photosystem II splits water, releasing O2 and passing electrons along the thylakoid membrane; "
        "the resulting proton gradient drives ATP synthase. The Calvin cycle then fixes CO2 using the enzyme "
        "RuBisCO, consuming 3 ATP and 2 NADPH per carbon fixed. Overall: 6CO2 + 6H2O + light -> C6H12O6 + 6O2."
    ),
}


def shard_samples(max_chars: int = 10_000) -> dict:
    """The first `max_chars` of the train and validation splits of the pretraining data."""
    from nanochat.dataset import parquets_iter_batched

    out = {}
    for split, name in [("train", "fwe-train"), ("val", "fwe-val")]:
        text = ""
        for batch in parquets_iter_batched(split=split):
            text += "\n".join(batch)
            if len(text) >= max_chars:
                break
        out[name] = text[:max_chars]
    return out


def compression_table(tokenizers: dict, samples: dict) -> list:
    """Rows {"text", "bytes", <name>: tokens, "<name> b/t": bytes per token} for each sample."""
    rows = []
    for kind, text in samples.items():
        n_bytes = len(text.encode("utf-8"))
        row = {"text": kind, "bytes": n_bytes}
        for name, tok in tokenizers.items():
            ids = tok.encode(text)
            assert tok.decode(ids) == text, f"{name} does not round-trip {kind}"
            row[name] = len(ids)
            row[f"{name} b/t"] = n_bytes / max(len(ids), 1)
        rows.append(row)
    return rows


def format_table(rows: list, names: list, ours: str = "ours") -> str:
    head = ["text", "bytes"] + [f"{n} tokens (b/t)" for n in names]
    head += [f"{ours} vs {n}" for n in names if n != ours]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["text"], str(r["bytes"])] + [f"{r[n]} ({r[n + ' b/t']:.2f})" for n in names]
        # positive = ours needs fewer tokens than the other tokenizer
        cells += [f"{100 * (r[n] - r[ours]) / r[n]:+.1f}%" for n in names if n != ours]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compression (bytes/token) of our tokenizer vs GPT-2 and GPT-4.")
    ap.add_argument("--no-shards", action="store_true", help="skip the pretraining-shard samples")
    args = ap.parse_args(argv)
    from nanochat.tokenizer import RustBPETokenizer, get_tokenizer

    tokenizers = {}
    for name, tiktoken_name in [("gpt2", "gpt2"), ("gpt4", "cl100k_base")]:
        try:
            tokenizers[name] = RustBPETokenizer.from_pretrained(tiktoken_name)
        except Exception as e:  # offline without TIKTOKEN_CACHE_DIR: compare what we can
            print0(f"warning: could not load {tiktoken_name} ({type(e).__name__}: {e}); skipping it")
    tokenizers["ours"] = get_tokenizer()
    print0("vocab sizes: " + ", ".join(f"{k}={t.get_vocab_size():,}" for k, t in tokenizers.items()))
    samples = dict(SAMPLES)
    if not args.no_shards:
        samples.update(shard_samples())
    rows = compression_table(tokenizers, samples)
    table = format_table(rows, list(tokenizers))
    print0(table)
    get_report().log(section="Tokenizer evaluation", data=[
        {"vocab_" + k: t.get_vocab_size() for k, t in tokenizers.items()},
        "Compression (bytes per token; last columns: fewer tokens than the other, in %):", table])
    return rows


if __name__ == "__main__":
    main()
