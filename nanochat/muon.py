"""
The optimizers of pretraining: Muon for the hidden matrices, AdamW for the embedding and the lm_head.

Design choices (as in nanochat, October 2025):
- Muon = SGD momentum (Nesterov) whose update is replaced by the nearest semi-orthogonal matrix, computed with
  five Newton-Schulz iterations of the quintic polynomial (a, b, c) = (3.4445, -4.7750, 2.0315), in bf16
  (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024)
- the step of a (rows x cols) matrix is scaled by sqrt(max(1, rows/cols)), so tall matrices move as far as square
- Muon only for 2-D matrices inside the blocks; the embedding and lm_head are lookups/readouts, not hidden
  transforms, and keep AdamW (betas 0.8/0.95, eps 1e-10) with their own learning rates
- AdamW learning rates scale as (n_embd / 768) ** -0.5: tuned at width 768, narrower/wider models get more/less
- same-shaped matrices are orthogonalised as one batched stack (3 launches per step at any depth, not 6 per layer)
- distributed: no DDP wrapper. DistAdamW averages gradients with all-reduce; DistMuon reduce-scatters them so
  that each rank owns 1/world of the matrices, orthogonalises only those, and all-gathers the new weights.
  Both give the same update as one process that saw the whole batch (tested with 2 gloo processes).
"""
from collections import defaultdict

import torch
import torch.distributed as dist

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5, dtype=torch.bfloat16) -> torch.Tensor:
    """Approximately U @ V^T for G = U S V^T (all singular values pushed towards ~1), batched over leading dims.

    The quintic is tuned to grow small singular values fast rather than to converge exactly: after 5 steps the
    singular values lie in roughly [0.7, 1.2], which is all Muon needs.
    """
    assert G.ndim >= 2, "Newton-Schulz needs matrices"
    a, b, c = NS_COEFFS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:                                   # iterate on the wide orientation: X @ X^T is the small Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)   # Frobenius norm >= spectral norm, so sigma <= 1
    for _ in range(steps):
        A = X @ X.mT                           # (.., r, r)
        B = b * A + c * (A @ A)
        X = a * X + B @ X                      # X <- a X + b (X X^T) X + c (X X^T)^2 X
    return X.mT if tall else X


_compiled_ns = None


def _newton_schulz(G, steps, compiled):
    global _compiled_ns
    if not G.is_cuda:   # CPUs without bf16 matmul units emulate it slowly: fp32 there
        return zeropower_via_newtonschulz5(G, steps, dtype=torch.float32)
    if not compiled:
        return zeropower_via_newtonschulz5(G, steps)
    if _compiled_ns is None:
        _compiled_ns = torch.compile(zeropower_via_newtonschulz5, dynamic=False)
    return _compiled_ns(G, steps)


def aspect_scale(shape) -> float:
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


def _momentum_directions(grads, bufs, momentum: float, nesterov: bool):
    """Update the momentum buffers in place and return the directions to orthogonalise."""
    torch._foreach_lerp_(bufs, grads, 1 - momentum)           # buf = momentum * buf + (1 - momentum) * g
    if nesterov:
        return [g.lerp(buf, momentum) for g, buf in zip(grads, bufs)]   # look ahead along the momentum
    return list(bufs)


def _orthogonalize(dirs, steps, compiled):
    """Newton-Schulz on a list of same-shaped matrices as one batched stack."""
    if len(dirs) == 1:
        return [_newton_schulz(dirs[0], steps, compiled)]
    return list(_newton_schulz(torch.stack(dirs), steps, compiled).unbind(0))


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2-D parameters only (single process)."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, compiled=None):
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError("Muon is for 2-D matrices; give embeddings, gains and biases to AdamW")
        if compiled is None:
            compiled = bool(params) and params[0].is_cuda
        self.compiled = compiled
        # one param group per shape, so a step is one batched Newton-Schulz per shape
        by_shape = defaultdict(list)
        for p in params:
            by_shape[tuple(p.shape)].append(p)
        groups = [dict(params=ps) for _, ps in sorted(by_shape.items())]
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad for p in ps]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad)) for p in ps]
            dirs = _momentum_directions(grads, bufs, group["momentum"], group["nesterov"])
            updates = _orthogonalize(dirs, group["ns_steps"], self.compiled)
            step = -group["lr"] * aspect_scale(ps[0].shape)
            torch._foreach_add_(ps, [u.to(p.dtype) for u, p in zip(updates, ps)], alpha=step)


class DistMuon(Muon):
    """Muon across ranks: reduce-scatter grads, each rank orthogonalises its share, all-gather the weights.

    Within a shape group, matrix i is owned by rank i % world_size; momentum buffers live on the owner only.
    Every rank must call step() with gradients present on every parameter (as in a normal training step).
    """

    @torch.no_grad()
    def step(self):
        rank, world = dist.get_rank(), dist.get_world_size()
        use_rs = dist.get_backend() != "gloo"    # gloo has no reduce_scatter: all-reduce and keep our share
        for group in self.param_groups:
            ps = group["params"]
            for p in ps:
                if p.grad is None:
                    raise RuntimeError("DistMuon needs a gradient on every parameter (all ranks must agree)")
            # 1) average gradients; rank r ends up with the averaged grad of the matrices it owns
            owned, works = [], []
            for base in range(0, len(ps), world):
                chunk = ps[base:base + world]
                mine = chunk[rank] if rank < len(chunk) else None
                if use_rs:
                    inputs = [p.grad for p in chunk] + [torch.zeros_like(chunk[0].grad)] * (world - len(chunk))
                    out = torch.empty_like(chunk[0].grad)
                    works.append(dist.reduce_scatter(out, inputs, op=dist.ReduceOp.AVG, async_op=True))
                else:
                    for p in chunk:
                        works.append(dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True))
                    out = None
                owned.append((chunk, mine, out))
            for w in works:
                w.wait()
            # 2) the owner's Muon step on its matrices (one batched Newton-Schulz for all of them)
            mine_ps = [m for _, m, _ in owned if m is not None]
            if mine_ps:
                if use_rs:
                    grads = [out for _, m, out in owned if m is not None]
                else:
                    grads = [m.grad.div_(world) for m in mine_ps]
                bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in mine_ps]
                dirs = _momentum_directions(grads, bufs, group["momentum"], group["nesterov"])
                updates = _orthogonalize(dirs, group["ns_steps"], self.compiled)
                step = -group["lr"] * aspect_scale(mine_ps[0].shape)
                torch._foreach_add_(mine_ps, [u.to(p.dtype) for u, p in zip(updates, mine_ps)], alpha=step)
            # 3) everyone receives every updated matrix from its owner
            works = []
            for chunk, mine, _ in owned:
                outs = [p.data for p in chunk] + [torch.empty_like(chunk[0]) for _ in range(world - len(chunk))]
                # the owner sends a copy (its own slot is also an output); a rank with no matrix here sends zeros
                src = mine.data.clone() if mine is not None else torch.zeros_like(chunk[0])
                works.append(dist.all_gather(outs, src, async_op=True))
            for w in works:
                w.wait()


class DistAdamW(torch.optim.AdamW):
    """AdamW whose step first averages gradients across ranks (so every rank applies the same update)."""

    @torch.no_grad()
    def step(self, closure=None):
        world = dist.get_world_size()
        works = [dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        for w in works:
            w.wait()
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, world)
        return super().step(closure)


def split_params(model):
    """(matrix, embedding, unembedding, other) parameter lists of a GPT: Muon takes the first."""
    emb = list(model.transformer.wte.parameters())
    unemb = list(model.lm_head.parameters())
    special = {id(p) for p in emb + unemb}
    rest = [p for p in model.parameters() if id(p) not in special]
    matrix = [p for p in rest if p.ndim == 2]
    other = [p for p in rest if p.ndim != 2]      # gains/scalars if a model variant has them
    return matrix, emb, unemb, other


def setup_optimizers(model, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0,
                     adam_betas=(0.8, 0.95)):
    """[AdamW(embedding, lm_head), Muon(hidden matrices)] with upstream's width scaling; DDP-aware.

    Every param group gets `initial_lr`, which the training loop's schedule multiplies.
    """
    matrix, emb, unemb, other = split_params(model)
    assert len(matrix) + len(emb) + len(unemb) + len(other) == len(list(model.parameters()))
    scale = (model.config.n_embd / 768) ** -0.5
    adam_groups = [dict(params=unemb, lr=unembedding_lr * scale), dict(params=emb, lr=embedding_lr * scale)]
    if other:
        adam_groups.append(dict(params=other, lr=embedding_lr * scale))
    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    on_cuda = next(model.parameters()).is_cuda
    kwargs = dict(betas=adam_betas, eps=1e-10, weight_decay=weight_decay)
    if ddp:
        adamw = DistAdamW(adam_groups, **kwargs)
        muon = DistMuon(matrix, lr=matrix_lr, momentum=0.95)
    else:
        adamw = torch.optim.AdamW(adam_groups, fused=on_cuda or None, **kwargs)
        muon = Muon(matrix, lr=matrix_lr, momentum=0.95)
    optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers
