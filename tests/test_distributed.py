"""The shared training loop under torchrun: two CPU processes (gloo) train one model together."""

import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    import helpers

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    helpers.seed_everything(0)
    config = helpers.TransformerConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = helpers.GPT(config)

    def batches(index):  # each index gives its own batch, so the two ranks see different data
        g = torch.Generator().manual_seed(index)
        seq = torch.randint(0, 16, (4, 9), generator=g)
        return seq[:, :-1], seq[:, 1:]

    history = helpers.fit(model, batches, steps=12, lr=1e-2, val_data=batches, eval_batches=2,
                          eval_every=6, device="cpu", progress=True)
    helpers.save_checkpoint(model, "00_distributed", steps=history.steps_done)
    torch.save({"state": model.state_dict(), "val": history.val_loss, "world": torch.distributed.get_world_size()},
               os.path.join(out, f"rank{rank}.pt"))
    """
)


def test_torchrun_two_processes_train_one_model(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, TFS_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for name, tensor in ranks[0]["state"].items():  # DDP keeps the replicas identical
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    assert ranks[0]["val"] == ranks[1]["val"]  # the logged losses are averaged across ranks

    checkpoints = sorted(p.name for p in (tmp_path / "data" / "checkpoints").iterdir())
    assert checkpoints == ["00_distributed.pt"]  # only rank 0 writes
    assert result.stderr.count("training: 100%") <= 1  # only rank 0 draws a progress bar


def test_a_single_process_changes_nothing():
    from helpers.distributed import Processes

    procs = Processes.start(torch.device("cpu"))  # not under torchrun
    assert (procs.rank, procs.world_size, procs.is_main) == (0, 1, True)
    model = torch.nn.Linear(2, 2)
    data = lambda step: step  # noqa: E731
    assert procs.wrap(model) is model and procs.shard(data) is data
    assert procs.mean([1.0, 3.0]) == [1.0, 3.0] and procs.max(2.5) == 2.5


def test_sharding_gives_each_process_its_own_batches():
    from helpers.distributed import Processes

    first, second = Processes(rank=0, world_size=2), Processes(rank=1, world_size=2)
    seen = [[p.shard(lambda i: i)(step) for step in range(3)] for p in (first, second)]
    assert seen == [[0, 2, 4], [1, 3, 5]]
