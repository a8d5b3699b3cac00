"""Distributed training beyond DDP: ZeRO-1/2 (readable), ZeRO-3 through FSDP2, sharded DCP
checkpoints, tensor / sequence / context / pipeline parallel, DeviceMesh; all runnable on CPU gloo.
See docs/distributed.md."""
