"""Behaviour every vssm_mm backbone shares: arch lookup, out_indices, freezing, norm_eval."""
import copy
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.ssm import reset_ssm_params


class VSSMBackboneMixin:
    """Mixed into each backbone (before ``BaseModule``).

    A backbone defines ``arch_zoo`` (name -> settings), optionally ``arch_aliases``, and
    :meth:`stem_and_stages` returning ``(stem, [stage0, stage1, ...])`` for freezing. Output
    norms are named ``outnorm{i}``.
    """

    arch_zoo: dict = {}
    arch_aliases: dict = {}

    @classmethod
    def parse_arch(cls, arch: Union[str, dict], required: Iterable[str] = ()) -> dict:
        if isinstance(arch, str):
            name = cls.arch_aliases.get(arch.lower(), arch.lower())
            if name not in cls.arch_zoo:
                valid = sorted(set(cls.arch_zoo) | set(cls.arch_aliases))
                raise ValueError(f'{cls.__name__}: unknown arch {arch!r}; choose one of {valid} '
                                 'or pass a dict of settings')
            return copy.deepcopy(cls.arch_zoo[name])
        if not isinstance(arch, dict):
            raise TypeError(f'{cls.__name__}: arch must be a name or a dict, got {type(arch)}')
        missing = [key for key in required if key not in arch]
        if missing:
            raise ValueError(f'{cls.__name__}: custom arch dict misses {missing} '
                             f'(needs {list(required)})')
        return copy.deepcopy(dict(arch))

    @staticmethod
    def parse_out_indices(out_indices: Union[Sequence[int], int], num_stages: int) -> Tuple[int]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        indices = []
        for index in out_indices:
            normalised = index + num_stages if index < 0 else index
            if not 0 <= normalised < num_stages:
                raise ValueError(f'out_indices entry {index} is out of range for '
                                 f'{num_stages} stages')
            indices.append(normalised)
        if not indices:
            raise ValueError('out_indices must name at least one stage')
        return tuple(sorted(set(indices)))

    @staticmethod
    def check_input(x: torch.Tensor, min_size: int = 16) -> None:
        if x.dim() != 4:
            raise ValueError(f'expected an image batch (B, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != 3:
            raise ValueError(f'expected 3 input channels (RGB), got {x.shape[1]}')
        if min(x.shape[2:]) < min_size:
            raise ValueError(f'input {tuple(x.shape[2:])} is too small: H and W must be at least '
                             f'{min_size} pixels')

    def forward_stages(self, x: torch.Tensor, blocks: str = 'blocks',
                       channels_first: bool = False) -> Tuple[torch.Tensor, ...]:
        """Run ``self.layers`` (each: ``<blocks>`` then ``downsample``) on the stem's output.

        Returns the ``outnorm{i}``-normed outputs of ``out_indices`` as NCHW maps and stops
        after the last requested stage.
        """
        outs = []
        for i, stage in enumerate(self.layers):
            x = getattr(stage, blocks)(x)
            if i in self.out_indices:
                out = getattr(self, f'outnorm{i}')(x)
                outs.append(out if channels_first else out.permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
            x = stage.downsample(x)
        return tuple(outs)

    def pretrained_init_cfg(self) -> Optional[dict]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        return next((cfg for cfg in cfgs
                     if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'), None)

    def is_pretrained_init(self) -> bool:
        return self.pretrained_init_cfg() is not None

    def stem_and_stages(self):
        raise NotImplementedError

    def init_weights(self):
        """The official VMamba-family init, then the ``Pretrained`` init_cfg's weights if any.

        Truncated-normal (0.02) Linear weights with zero biases, unit LayerNorms and Mamba's
        SSM init (modules made by ``init_ssm_params``); :meth:`init_extra` handles what a
        family initialises differently. Runs after a parent classifier's generic init_cfg, so
        the SSM init is never overwritten. A ``Pretrained`` init_cfg then loads what fits
        (non-strict) and logs one line saying what was not loaded.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif hasattr(module, '_ssm_init_args'):
                reset_ssm_params(module)
            else:
                self.init_extra(module)
        pretrained = self.pretrained_init_cfg()
        if pretrained is not None:
            from vssm_mm.checkpoint.fit import load_pretrained
            load_pretrained(self, pretrained['checkpoint'], pretrained.get('prefix'),
                            pretrained.get('map_location', 'cpu'))
        self._is_init = True

    def init_extra(self, module: nn.Module) -> None:
        """Family-specific init of a module the shared rules do not cover (default: keep)."""

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        stem, stages = self.stem_and_stages()
        if self.frozen_stages > len(stages):
            raise ValueError(f'frozen_stages={self.frozen_stages} but the model has '
                             f'{len(stages)} stages')
        frozen = [stem] + list(stages[:self.frozen_stages])
        frozen += [getattr(self, f'outnorm{i}') for i in range(self.frozen_stages)
                   if hasattr(self, f'outnorm{i}')]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
