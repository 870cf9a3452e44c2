"""
Things every script needs: where artifacts live, which device to use, and the distributed set-up.

Design choices:
- one base directory for every artifact (tokenizer, checkpoints, data, report), `NANOCHAT_BASE_DIR`
- torchrun's environment variables decide DDP; a plain `python -m` run is a world of one
- nccl on CUDA, gloo on CPU, so the same DDP code is testable on a laptop with two processes
"""
import os
import random

import torch
import torch.distributed as dist


def get_base_dir() -> str:
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base, exist_ok=True)
    return base


def get_dist_info():
    """(ddp, rank, local_rank, world_size) from torchrun's environment; (False, 0, 0, 1) otherwise."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def print0(*args, **kwargs):
    """print on rank 0 only, so an 8-GPU run logs one line per event, not eight."""
    if get_dist_info()[1] == 0:
        print(*args, **kwargs)


def autodetect_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def dtype_for(device_type: str):
    """The autocast dtype: bf16 matmuls on CUDA, plain fp32 elsewhere (CPU bf16 is slow and noisy)."""
    return torch.bfloat16 if device_type == "cuda" else None


def seed_everything(seed: int = 42):
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass


def compute_init(device_type: str | None = None, seed: int = 42):
    """Seed, pick the device, and join the process group when launched by torchrun.

    Returns (ddp, ddp_rank, ddp_local_rank, ddp_world_size, device).
    """
    device_type = device_type or autodetect_device_type()
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device-type cuda was asked for, but torch sees no CUDA device")
    seed_everything(seed)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 leftovers (softmax stats, optimizer) use TF32
        torch.backends.cudnn.allow_tf32 = True
    ddp, rank, local_rank, world_size = get_dist_info()
    if ddp and not dist.is_initialized():
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device(device_type)
    return ddp, rank, local_rank, world_size, device


def compute_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# Dense bf16 peak of the cards we know, in FLOP/s, for MFU. Sources: NVIDIA data sheets (SXM parts).
_PEAK_BF16 = {
    "H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12,
    "L40S": 362e12, "A10": 125e12, "4090": 165e12, "3090": 71e12,
}


def peak_flops(device) -> float | None:
    """bf16 dense peak of the detected GPU (None on CPU/MPS or an unknown card: MFU is then not reported)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in _PEAK_BF16.items():
        if key in name:
            return flops
    return None


class DummyWandb:
    """Stands in for a wandb run when logging is off, so call sites need no if-statements."""

    def log(self, *args, **kwargs):
        pass

    def finish(self):
        pass
