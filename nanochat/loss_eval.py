"""
Bits per byte: the validation loss that does not depend on the tokenizer.

Design choices:
- mean cross-entropy per *token* changes when the vocabulary changes (a bigger vocab packs more bytes into each
  token, so each token is harder to predict); dividing the summed loss by the number of UTF-8 *bytes* the targets
  stand for, and converting nats to bits, gives a number comparable across tokenizers:
      bpb = sum_t loss_t / (ln 2 * sum_t bytes(target_t))
- `token_bytes[id]` is the byte length of each token; special tokens have 0 bytes and are left out of both sums,
  as are ignored targets (-1)
- distributed-aware: every rank sums its own nats and bytes, one all_reduce adds them up, every rank returns
  the same number
"""
import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes):
    """Bits per byte of `model` over `steps` batches drawn from the iterator `batches`.

    `batches` yields (inputs, targets) or (inputs, targets, anything), both (B, T) long tensors;
    `token_bytes` is a (vocab_size,) tensor of per-token byte lengths on the model's device.
    """
    device = token_bytes.device
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    batch_iter = iter(batches)
    for _ in range(steps):
        x, y = next(batch_iter)[:2]
        loss = model(x, y, loss_reduction="none").view(-1)      # (B*T,) nats per target token
        y = y.reshape(-1)
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)].to(y.dtype), torch.zeros_like(y))
        counted = nbytes > 0                                      # real text, not specials / padding
        total_nats += (loss.double() * counted).sum()
        total_bytes += nbytes.sum().to(torch.int64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    total_bytes = total_bytes.item()
    if total_bytes == 0:
        return float("inf")
    return total_nats.item() / (math.log(2) * total_bytes)
