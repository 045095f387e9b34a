"""One Stage for every family: blocks (with optional activation checkpointing), then downsample."""
from typing import Optional, Sequence

import torch
import torch.utils.checkpoint as cp
from torch import nn


class Stage(nn.Module):
    """``blocks`` in sequence, then ``downsample`` (the input of the next stage).

    :meth:`forward_blocks` returns the stage's feature (what ``out_indices`` selects);
    :meth:`forward_downsample` turns it into the next stage's input. Blocks take one tensor, or
    one tensor plus fixed extra arguments (``*args``, e.g. the token grid of GroupMamba).

    Args:
        blocks (Sequence[nn.Module]): The stage's blocks.
        downsample (nn.Module, optional): Applied after the blocks; ``None`` for the last stage.
        with_cp (bool): Activation checkpointing per block while training (saves memory,
            costs a second forward).
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module] = None,
                 with_cp: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward_blocks(self, x: torch.Tensor, *args) -> torch.Tensor:
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled() and x.requires_grad:
                x = cp.checkpoint(block, x, *args, use_reentrant=False)
            else:
                x = block(x, *args)
        return x

    def forward_downsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:
            raise RuntimeError('the last stage has no downsample')
        return self.downsample(x)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        x = self.forward_blocks(x, *args)
        return x if self.downsample is None else self.downsample(x)
