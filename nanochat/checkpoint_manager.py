"""
Saving and loading checkpoints: model weights, per-rank optimizer (and loader) state, and a JSON meta file.

Design choices:
- layout `<base>/<phase>_checkpoints/<model_tag>/`: `model_{step:06d}.pt` (rank 0), `optim_{step:06d}_rank{r}.pt`
  (every rank: DistMuon shards its momentum, and each rank has its own loader position), `meta_{step:06d}.json`
- every file is written to a temp name in the same folder, fsync'ed, then renamed: a crash leaves the old
  checkpoint or the whole new one, never half a file. The meta file is written last (after a barrier under DDP)
  and records each file's size and sha256 (each rank hashes its own optimizer file), so a step counts only once
  everything it needs is on disk
- on load, a truncated or corrupt file raises CheckpointError that names the file; `load_model` without an
  explicit step then falls back to the previous complete checkpoint, with a warning
- `load_model` with no tag picks the largest model (d26 over d20), and with no step the last one
"""
import glob
import hashlib
import json
import os
import re
import warnings

import torch
import torch.distributed as dist

from nanochat.common import get_base_dir, print0

PHASE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "rl": "chatrl_checkpoints"}


class CheckpointError(RuntimeError):
    pass


def _sha256(path, chunk=1 << 24):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _atomic_write(path, write_fn):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _paths(checkpoint_dir, step, rank=0):
    return (os.path.join(checkpoint_dir, f"model_{step:06d}.pt"),
            os.path.join(checkpoint_dir, f"optim_{step:06d}_rank{rank}.pt"),
            os.path.join(checkpoint_dir, f"meta_{step:06d}.json"))


def save_checkpoint(checkpoint_dir, step, model_data, optimizer_data, meta_data, rank=0):
    """Write one step's files atomically. Call on every rank (each writes its optimizer shard)."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    model_path, optim_path, meta_path = _paths(checkpoint_dir, step, rank)
    if rank == 0:
        _atomic_write(model_path, lambda f: torch.save(model_data, f))
    mine = {}
    if optimizer_data is not None:
        _atomic_write(optim_path, lambda f: torch.save(optimizer_data, f))
        # each rank hashes its own file (in parallel); a same-size corruption is caught on resume like the model's
        mine = {os.path.basename(optim_path): {"bytes": os.path.getsize(optim_path), "sha256": _sha256(optim_path)}}
    ddp = dist.is_available() and dist.is_initialized()
    everyone = [mine]
    if ddp:   # (the gather also means every rank's optimizer file is on disk before the meta says it is complete)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
    if rank == 0:
        files = {os.path.basename(model_path): {"bytes": os.path.getsize(model_path),
                                                "sha256": _sha256(model_path)}}
        for entry in everyone:
            files.update(entry)
        meta = {**meta_data, "step": step, "files": files}
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2, default=str).encode()))
    if ddp:
        dist.barrier()
    print0(f"saved checkpoint step {step} to {checkpoint_dir}")


def _check_file(path, expected, verify_hash):
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing")
    if expected is None:
        return
    size = os.path.getsize(path)
    if size != expected["bytes"]:
        raise CheckpointError(f"{path} is truncated or changed: {size} bytes on disk, "
                              f"{expected['bytes']} when it was saved")
    if verify_hash and "sha256" in expected and _sha256(path) != expected["sha256"]:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match the one saved in the meta file")


def _torch_load(path, device):
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:   # a zip/pickle error: the file is damaged
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {e}); it is truncated or "
                              f"corrupt") from None


def load_checkpoint(checkpoint_dir, step, device, load_optimizer=False, rank=0, verify_hash=True):
    """(model_data, optimizer_data or None, meta_data) of one step, each file checked against the meta."""
    model_path, optim_path, meta_path = _paths(checkpoint_dir, step, rank)
    if not os.path.exists(meta_path):
        raise CheckpointError(f"{meta_path} is missing: step {step} was never completely saved")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is corrupt ({e})") from None
    files = meta.get("files", {})
    _check_file(model_path, files.get(os.path.basename(model_path)), verify_hash)
    model_data = _torch_load(model_path, device)
    optim_data = None
    if load_optimizer:
        _check_file(optim_path, files.get(os.path.basename(optim_path)), verify_hash)
        optim_data = _torch_load(optim_path, device)
    return model_data, optim_data, meta


def list_steps(checkpoint_dir):
    """Steps with a meta file (i.e. completely saved), ascending."""
    steps = []
    for p in glob.glob(os.path.join(checkpoint_dir, "meta_*.json")):
        m = re.fullmatch(r"meta_(\d+)\.json", os.path.basename(p))
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def find_last_step(checkpoint_dir):
    steps = list_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir}")
    return steps[-1]


def find_largest_model(checkpoints_dir):
    """The model tag to use when none is given: the largest dN, else the most recently written folder."""
    if not os.path.isdir(checkpoints_dir):
        raise FileNotFoundError(f"no checkpoints folder {checkpoints_dir}")
    tags = [t for t in os.listdir(checkpoints_dir) if os.path.isdir(os.path.join(checkpoints_dir, t))]
    if not tags:
        raise FileNotFoundError(f"no model tags in {checkpoints_dir}")
    depths = [(int(m.group(1)), t) for t in tags if (m := re.fullmatch(r"d(\d+)", t))]
    if depths:
        return max(depths)[1]
    return max(tags, key=lambda t: os.path.getmtime(os.path.join(checkpoints_dir, t)))


def _strip_compile_prefix(state_dict):
    return {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}


def build_model(checkpoint_dir, step, device, phase, verify_hash=True):
    """(model, tokenizer, meta_data) from one checkpoint; phase "train" or "eval" sets the module's mode."""
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import get_tokenizer
    assert phase in ("train", "eval"), f"phase must be 'train' or 'eval', got {phase!r}"
    device = torch.device(device)
    model_data, _, meta = load_checkpoint(checkpoint_dir, step, device, verify_hash=verify_hash)
    if device.type in ("cpu", "mps"):   # bf16 weights (if any were saved) -> fp32 where bf16 is slow
        model_data = {k: v.float() if v.is_floating_point() else v for k, v in model_data.items()}
    config = GPTConfig(**meta["model_config"])
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()            # fills the non-persistent RoPE buffers; the weights are overwritten below
    model.load_state_dict(_strip_compile_prefix(model_data), strict=True)
    model.train() if phase == "train" else model.eval()
    tokenizer = get_tokenizer()
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                              f"{config.vocab_size}: the checkpoint and <base>/tokenizer do not belong together")
    return model, tokenizer, meta


def load_model_from_dir(checkpoints_dir, device, phase, model_tag=None, step=None):
    model_tag = model_tag or find_largest_model(checkpoints_dir)
    checkpoint_dir = os.path.join(checkpoints_dir, model_tag)
    if step is not None:
        return build_model(checkpoint_dir, step, device, phase)
    steps = list_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir}")
    errors = []
    for s in reversed(steps):           # newest first; a damaged one falls back to the one before
        try:
            out = build_model(checkpoint_dir, s, device, phase)
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint: {e}")
            errors.append(str(e))
            continue
        if errors:
            print0(f"WARNING: loaded step {s} of {checkpoint_dir} instead of the damaged newer one(s)")
        return out
    raise CheckpointError(f"every checkpoint in {checkpoint_dir} is damaged:\n" + "\n".join(errors))


def load_model(source, device, phase, model_tag=None, step=None):
    """source "base" | "mid" | "sft" | "rl" -> (model, tokenizer, meta_data) from <base>/<source dir>."""
    if source not in PHASE_DIRS:
        raise ValueError(f"source must be one of {sorted(PHASE_DIRS)}, got {source!r}")
    return load_model_from_dir(os.path.join(get_base_dir(), PHASE_DIRS[source]), device, phase, model_tag, step)
