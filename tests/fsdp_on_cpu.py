"""`python -m torch.distributed.run --nproc_per_node N tests/fsdp_on_cpu.py SCRIPT ARGS [:: ARGS ...]`: SCRIPT's
training runs (one per `::`-separated argument list, one after another in the same processes) through Accelerate's
FSDP2 code path on CPU with gloo, a test stand-in for GPUs.

accelerate 1.15 selects FSDP for GPU-like devices only (AcceleratorState sets it for MULTI_GPU/XPU/NPU/..., never
MULTI_CPU); given ACCELERATE_USE_CPU and an FSDP config it trains plain DDP and says nothing. torch's FSDP2
(fully_shard) does run on CPU with gloo, so this shim switches the distributed type to FSDP once Accelerate has set up
MULTI_CPU, with the plugin built from the FSDP_* variables that `accelerate launch --config_file
configs/accelerate/fsdp.yaml` exports. All the rest (fully_shard, get_state_dict, the sharded save_state and
load_state) is Accelerate's own FSDP2 code."""

import runpy
import sys
from pathlib import Path

import torch.distributed
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_original_init = AcceleratorState.__init__


def _as_fsdp(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        PartialState().distributed_type = DistributedType.FSDP  # every later AcceleratorState() copies it from there
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = FullyShardedDataParallelPlugin()  # FSDP_* from the environment, as accelerate launch sets
        if self._mixed_precision != "no":
            self.fsdp_plugin.set_mixed_precision(self._mixed_precision)


def main(script: str, argv: list[str]) -> int:
    from difftrain.cli import run

    AcceleratorState.__init__ = _as_fsdp
    # end_training destroys the process group; a second init_process_group in the same torchrun processes waits
    # forever on the agent's store, so the group is kept for the next run and destroyed once at the end
    PartialState.destroy_process_group = lambda self, group=None: None
    sys.path.insert(0, str(Path(script).resolve().parent))
    work = runpy.run_path(script)["main"]  # not as __main__: its main is called below, once per run
    runs = [[]]
    for arg in argv:
        runs.append([]) if arg == "::" else runs[-1].append(arg)
    for args in runs:
        AcceleratorState._reset_state(reset_partial_state=True)  # each run sets Accelerate up as a new process would
        GradientState._reset_state()
        code = run(work, args)
        if code:
            return code
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
