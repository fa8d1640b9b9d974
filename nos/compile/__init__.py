"""A Rule becomes a program of instructions over slots, optimised by passes, run by the
per-tensor reference, the multi-tensor executor or the fused (``torch.compile``) path."""
