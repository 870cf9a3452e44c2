"""
The per-step math of post-training, shared by scripts/mid_train.py, scripts/chat_sft.py, scripts/chat_rl.py
and chapters 8-9 (which build each piece in cells and assert it equals the one here).

Design choices (as nanochat, October 2025):
- midtraining packs rendered conversations end to end into full (B, T) rows, exactly like pretraining; every
  token is a target (the model learns the chat format itself, special tokens included)
- SFT keeps one conversation per row, right-padded; a target is kept only where the renderer's mask is 1
  (assistant tokens), everything else is -1, which cross-entropy ignores (`IGNORE_INDEX`)
- RL is GRPO reduced to its core: advantage = reward - mean reward of the same question's samples
  (no division by the std, no KL penalty to a reference model, no PPO ratio clipping: every batch of samples is
  used for one on-policy gradient step, so the importance ratio is exactly 1 and there is nothing to clip)
- the policy-gradient loss is token-level: sum of advantage * log p(token) over sampled tokens, divided by the
  number of sampled tokens, so long and short answers weigh each token the same
- pass@k uses the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)
"""
import math
from collections import deque

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1   # the target value that F.cross_entropy(..., ignore_index=-1) skips


# ---------------------------------------------------------------------------------------------------------------
# Midtraining: pack conversations into full rows
# ---------------------------------------------------------------------------------------------------------------

def pack_rows(token_lists, B: int, T: int):
    """Pack lists of token ids end to end into (inputs, targets) of shape (B, T), targets shifted by one.

    Returns (inputs, targets, leftover): leftover holds the tokens that did not fit, to start the next batch.
    Needs at least B*T + 1 tokens in total (the last target needs one token past the last input).
    """
    flat = [t for ids in token_lists for t in ids]
    need = B * T + 1
    if len(flat) < need:
        raise ValueError(f"need {need} tokens to fill a ({B}, {T}) batch, got {len(flat)}")
    chunk = torch.tensor(flat[:need], dtype=torch.long)
    inputs = chunk[:-1].view(B, T)
    targets = chunk[1:].view(B, T)
    # The token that is the last target is not re-used as the next batch's first input: rows are independent
    # samples, and the one-token overlap would only matter for exact document boundaries (it does not here).
    return inputs, targets, flat[need:]


class ChatPacker:
    """Streams a dataset of conversations, renders each in the chat format, packs the tokens into (B, T) rows.

    Rank r of a world of W reads conversations r, r+W, r+2W, ... so the ranks see disjoint data. The state
    (cursor, epoch, leftover tokens) is a small dict saved in each checkpoint, so a resumed run continues with
    exactly the batch it would have produced.
    """

    def __init__(self, dataset, tokenizer, B: int, T: int, rank: int = 0, world_size: int = 1,
                 max_tokens: int = 2048, state: dict | None = None):
        if len(dataset) < world_size:
            raise ValueError(f"dataset of {len(dataset)} conversations is smaller than the world ({world_size})")
        self.dataset, self.tokenizer = dataset, tokenizer
        self.B, self.T, self.rank, self.world_size, self.max_tokens = B, T, rank, world_size, max_tokens
        self.cursor, self.epoch, self.buffer = rank, 0, deque()
        if state is not None:
            self.load_state_dict(state)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "epoch": self.epoch, "leftover": list(self.buffer)}

    def load_state_dict(self, state: dict):
        self.cursor, self.epoch = int(state["cursor"]), int(state["epoch"])
        self.buffer = deque(state.get("leftover", []))

    @property
    def progress(self) -> float:
        """Epochs consumed, as a float (1.0 = one full pass over the dataset on every rank)."""
        return self.epoch + self.cursor / len(self.dataset)

    def _next_conversation_ids(self):
        ids, _mask = self.tokenizer.render_conversation(self.dataset[self.cursor], max_tokens=self.max_tokens)
        self.cursor += self.world_size
        if self.cursor >= len(self.dataset):
            self.cursor -= len(self.dataset)
            self.epoch += 1
        return ids

    def next_batch(self):
        """(inputs, targets) as CPU int64 tensors of shape (B, T)."""
        need = self.B * self.T + 1
        while len(self.buffer) < need:
            self.buffer.extend(self._next_conversation_ids())
        chunk = [self.buffer.popleft() for _ in range(need)]
        inputs, targets, _ = pack_rows([chunk], self.B, self.T)
        return inputs, targets


# ---------------------------------------------------------------------------------------------------------------
# SFT: one conversation per row, loss only where the mask is 1
# ---------------------------------------------------------------------------------------------------------------

def sft_collate(rows, pad_id: int):
    """Batch rendered conversations [(ids, mask), ...] into (inputs, targets) of shape (B, L-1), L = longest row.

    inputs are right-padded with pad_id; targets are ids shifted by one, with IGNORE_INDEX where the *target*
    token's mask is 0 (user turns, tool outputs, BOS) and on padding. Rows may have different lengths.
    """
    L = max(len(ids) for ids, _ in rows)
    inputs = torch.full((len(rows), L - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), L - 1), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        if len(ids) != len(mask):
            raise ValueError(f"row {i}: {len(ids)} ids but {len(mask)} mask entries")
        n = len(ids) - 1
        ids_t = torch.tensor(ids, dtype=torch.long)
        mask_t = torch.tensor(mask, dtype=torch.long)
        inputs[i, :n] = ids_t[:-1]
        targets[i, :n] = torch.where(mask_t[1:] == 1, ids_t[1:], torch.full_like(ids_t[1:], IGNORE_INDEX))
    return inputs, targets


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the positions whose target is not IGNORE_INDEX. logits (B, T, V), targets (B, T).

    'mean' averages over the kept tokens only (padding and prompt tokens do not dilute the loss);
    'sum' returns the total, 'none' a (B, T) tensor with 0 at ignored positions.
    """
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T),
                           ignore_index=IGNORE_INDEX, reduction="mean" if reduction == "mean" else "none")
    if reduction == "mean":
        return loss
    loss = loss.view(B, T)
    return loss.sum() if reduction == "sum" else loss


# ---------------------------------------------------------------------------------------------------------------
# RL: rewards -> advantages -> token-level policy gradient
# ---------------------------------------------------------------------------------------------------------------

def rl_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Group baseline: each sample's reward minus the mean reward of its group (the k samples of one question).

    rewards: (k,) for one question, or (n_questions, k). Not divided by the std (as nanochat): a question that
    all samples solve, or all fail, gives zero advantage, hence zero gradient, either way.
    """
    rewards = rewards.float()
    return rewards - rewards.mean(dim=-1, keepdim=True)


def rl_batch(sequences, masks, pad_id: int):
    """Pad sampled sequences (prompt + completion token lists) into (inputs, targets) for the PG loss.

    masks[i][j] is 1 where token j was sampled by the policy, 0 for the prompt and for tokens the engine forced
    (tool outputs): only sampled tokens get a gradient, so targets are IGNORE_INDEX everywhere else.
    """
    return sft_collate(list(zip(sequences, masks)), pad_id)


def pg_loss(logp: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Token-level REINFORCE loss. logp (B, T): log-prob of each target token; targets (B, T) with IGNORE_INDEX
    on tokens that get no gradient; advantages (B,), one per sequence.

    loss = - sum_{i,t valid} A_i * logp_{i,t} / (number of valid tokens). Minimising it raises the probability of
    tokens in better-than-average samples and lowers it in worse-than-average ones.
    """
    valid = (targets != IGNORE_INDEX).to(logp.dtype)
    objective = (logp * valid * advantages.to(logp.dtype).unsqueeze(-1)).sum()
    return -objective / valid.sum().clamp(min=1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position, (B, T); 0 where the target is IGNORE_INDEX."""
    return -sft_loss(logits, targets, reduction="none")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n of which c are correct, is
    correct (the unbiased pass@k estimator of Chen et al., 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------

def lr_multiplier_mid(progress: float, warmdown_frac: float = 0.2) -> float:
    """Midtraining: constant LR, then a linear decay to 0 over the last `warmdown_frac` of training."""
    if progress < 1.0 - warmdown_frac:
        return 1.0
    return max(0.0, (1.0 - progress) / warmdown_frac)


def lr_multiplier_linear(step: int, num_iterations: int) -> float:
    """SFT and RL: linear decay from 1 to 0 over the run."""
    return max(0.0, 1.0 - step / max(1, num_iterations))


def muon_momentum(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Muon's momentum warms up from 0.85 to 0.95 over the first 300 steps (as in base training)."""
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


# ---------------------------------------------------------------------------------------------------------------
# Loop plumbing shared by the three scripts (kept here so each script reads as its training loop)
# ---------------------------------------------------------------------------------------------------------------

def autocast_ctx(device_type: str):
    """bf16 autocast on CUDA (matmuls in bf16, reductions in fp32); plain fp32 elsewhere."""
    from contextlib import nullcontext
    from nanochat.common import dtype_for
    dtype = dtype_for(device_type)
    return torch.amp.autocast(device_type=device_type, dtype=dtype) if dtype is not None else nullcontext()


def set_initial_lrs(optimizers, init_lr_frac: float):
    """Scale every group's LR by init_lr_frac (finetuning starts lower than pretraining) and remember it."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["lr"] * init_lr_frac
            group["initial_lr"] = group["lr"]


def apply_lr(optimizers, lrm: float):
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm


def apply_muon_momentum(optimizers, momentum: float):
    for opt in optimizers:
        if "muon" in type(opt).__name__.lower():
            for group in opt.param_groups:
                group["momentum"] = momentum


def find_last_step(checkpoint_dir: str):
    """The largest completely saved step in the folder (its meta_N.json exists: written last), or None."""
    import os
    import re
    if not os.path.isdir(checkpoint_dir):
        return None
    steps = [int(m.group(1)) for f in os.listdir(checkpoint_dir) if (m := re.fullmatch(r"meta_(\d+)\.json", f))]
    return max(steps) if steps else None


PHASE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "rl": "chatrl_checkpoints"}


def load_start(source: str, phase: str, device, model_tag=None, model_step=None, resume: bool = False):
    """The model a post-training phase starts from, and the folder it saves to.

    Loads the `source` phase's checkpoint (the given tag/step, else the largest tag's last step); with `resume`,
    this phase's own last checkpoint instead, when one exists. The output folder keeps the source's model tag, so
    a d2 base model becomes mid_checkpoints/d2, chatsft_checkpoints/d2, ...
    Returns (model, tokenizer, meta, out_dir, model_tag, resume_step).
    """
    import os
    from nanochat.checkpoint_manager import load_model
    from nanochat.common import get_base_dir, print0
    model, tokenizer, meta = load_model(source, device, phase="train", model_tag=model_tag, step=model_step)
    model_tag = model_tag or f"d{model.config.n_layer}"
    out_dir = os.path.join(get_base_dir(), PHASE_DIRS[phase], model_tag)
    resume_step = find_last_step(out_dir) if resume else None
    if resume and resume_step is None:
        print0(f"--resume: no checkpoint in {out_dir}, starting from the {source} model")
    if resume_step is not None:
        model, tokenizer, meta = load_model(phase, device, phase="train", model_tag=model_tag, step=resume_step)
    return model, tokenizer, meta, out_dir, model_tag, resume_step


def init_wandb(run: str, project: str, config: dict, master: bool):
    """A wandb run, or DummyWandb when run == 'dummy' or on non-master ranks."""
    from nanochat.common import DummyWandb
    if run == "dummy" or not master:
        return DummyWandb()
    import wandb
    return wandb.init(project=project, name=run, config=config)


def should_print(step: int, num_steps: int) -> bool:
    """Every step normally; ~10 lines per run under NANOCHAT_NO_PROGRESS=1 (tests, book subprocesses)."""
    import os
    if not os.environ.get("NANOCHAT_NO_PROGRESS"):
        return True
    return num_steps <= 0 or step % max(1, num_steps // 10) == 0 or step == num_steps - 1


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m{seconds % 60:02d}s"


def make_optimizers(model, **lrs):
    """The pretraining optimizers (AdamW for embedding/lm_head, Muon for matrices; the Dist* variants under DDP,
    which average gradients themselves, so no DDP wrapper is needed)."""
    if hasattr(model, "setup_optimizers"):
        return model.setup_optimizers(**lrs)
    from nanochat.muon import setup_optimizers
    return setup_optimizers(model, **lrs)
