"""The pretraining loader: BOS-aligned best-fit rows, shifted targets, DDP sharding, exact resume."""
import pytest
import torch

from nanochat.dataloader import _Buffer, position_of, tokenizing_distributed_data_loader


@pytest.fixture
def gpt2_tok(hub_mirror):
    from nanochat.tokenizer import RustBPETokenizer
    return RustBPETokenizer.from_pretrained("gpt2")


def test_best_fit_buffer_picks_longest_that_fits():
    buf = _Buffer()
    for i, n in enumerate([5, 9, 3, 9, 7]):
        buf.add(i, list(range(n)))
    assert buf.lens == [3, 5, 7, 9, 9]
    assert len(buf.take_fitting(8)) == 7            # longest <= 8
    assert buf.ids[-1] == 3                          # equal lengths: the later one sits last and is taken first
    assert len(buf.take_fitting(100)) == 9 and buf.take_fitting(2) is None
    assert len(buf.take_shortest()) == 3


def test_rows_start_with_bos_and_targets_shift(gpt2_tok, base_dir):
    B, T = 4, 64
    stats = {}
    loader = tokenizing_distributed_data_loader(B, T, "train", device="cpu", tokenizer=gpt2_tok, stats=stats,
                                                tokenizer_threads=2)
    bos = gpt2_tok.get_bos_token_id()
    for _ in range(5):
        x, y, state = next(loader)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
        assert (x[:, 0] == bos).all()                    # every row begins a document
        assert torch.equal(x[:, 1:], y[:, :-1])          # targets are the inputs shifted by one
        assert int(x.min()) >= 0 and int(x.max()) < gpt2_tok.get_vocab_size()   # no padding ids
    assert stats["tokens"] == 5 * B * (T + 1)
    assert set(position_of(state)) == {"epoch", "shard", "row_group", "buffered_docs"}


def test_resume_gives_the_same_batches(gpt2_tok, base_dir):
    kw = dict(device="cpu", tokenizer=gpt2_tok, tokenizer_threads=2, buffer_size=64)
    ref = tokenizing_distributed_data_loader(3, 96, "train", **kw)
    batches = [next(ref) for _ in range(12)]
    resumed = tokenizing_distributed_data_loader(3, 96, "train", resume_state_dict=batches[4][2], **kw)
    for i in range(5, 12):
        x, y, _ = next(resumed)
        assert torch.equal(x, batches[i][0]) and torch.equal(y, batches[i][1]), i


def test_ddp_ranks_read_disjoint_documents(gpt2_tok, base_dir, monkeypatch):
    rows = {}
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = tokenizing_distributed_data_loader(4, 32, "train", device="cpu", tokenizer=gpt2_tok,
                                                    tokenizer_threads=1, buffer_size=16)
        x, _, state = next(loader)
        assert state["rank"] == rank and state["world_size"] == 2
        rows[rank] = {tuple(r.tolist()) for r in x}
    assert not rows[0] & rows[1]
    # a state saved by rank 1 cannot be resumed by a single process
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="same number of processes"):
        next(tokenizing_distributed_data_loader(4, 32, "train", device="cpu", tokenizer=gpt2_tok,
                                                resume_state_dict=state))
