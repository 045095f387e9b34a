"""Behaviour every vssm_mm backbone shares: arch lookup, out_indices, freezing, norm_eval."""
import copy
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.ssm import SelectiveSSM


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class VSSMBackboneMixin:
    """Mixed into each backbone (before ``BaseModule``).

    A backbone defines ``arch_zoo`` (name -> settings), optionally ``arch_aliases``, and either
    the canonical tree (``stem``, ``stages``: :class:`~vssm_mm.models.layers.Stage` s,
    ``out_norms``: a ``ModuleDict`` keyed by the stage index) or its own
    :meth:`stem_and_stages` returning ``(stem, [stage0, stage1, ...])`` for freezing.
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
        accepted = (f'out_indices must be an int or a list/tuple of ints in '
                    f'[-{num_stages}, {num_stages - 1}]')
        if _is_int(out_indices):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)):
            raise TypeError(f'{accepted}, got {out_indices!r} ({type(out_indices).__name__})')
        indices = []
        for index in out_indices:
            if not _is_int(index):
                raise TypeError(f'{accepted}, got the entry {index!r} '
                                f'({type(index).__name__})')
            normalised = index + num_stages if index < 0 else index
            if not 0 <= normalised < num_stages:
                raise ValueError(f'out_indices entry {index} is out of range for '
                                 f'{num_stages} stages')
            indices.append(normalised)
        if not indices:
            raise ValueError('out_indices must name at least one stage')
        return tuple(sorted(set(indices)))

    @staticmethod
    def parse_frozen_stages(frozen_stages: int, num_stages: int) -> int:
        """``-1`` (freeze nothing) or ``0 .. num_stages`` (the stem and that many stages)."""
        accepted = (f'frozen_stages must be an int: -1 (freeze nothing), 0 (the stem only) or '
                    f'up to {num_stages} (the stem and that many stages)')
        if not _is_int(frozen_stages):
            raise TypeError(f'{accepted}, got {frozen_stages!r} ({type(frozen_stages).__name__})')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'{accepted}, got {frozen_stages}')
        return frozen_stages

    @staticmethod
    def check_input(x: torch.Tensor, min_size: int = 16) -> None:
        if x.dim() != 4:
            raise ValueError(f'expected an image batch (B, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != 3:
            raise ValueError(f'expected 3 input channels (RGB), got {x.shape[1]}')
        if min(x.shape[2:]) < min_size:
            raise ValueError(f'input {tuple(x.shape[2:])} is too small: H and W must be at least '
                             f'{min_size} pixels')

    def forward_stages(self, x: torch.Tensor, *args,
                       channels_first: bool = False) -> Tuple[torch.Tensor, ...]:
        """Run ``self.stages`` on the stem's output (``*args`` go to every block).

        Returns the ``out_norms``-normed features of ``out_indices`` as NCHW maps and stops
        after the last requested stage.
        """
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage.forward_blocks(x, *args)
            if i in self.out_indices:
                out = self.out_norms[str(i)](x)
                outs.append(out if channels_first else out.permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
            x = stage.forward_downsample(x)
        return tuple(outs)

    def build_out_norms(self, norm: type, dims: Sequence[int], **kwargs) -> None:
        """One ``norm(dims[i])`` per output stage, in ``self.out_norms[str(i)]``."""
        self.out_norms = nn.ModuleDict({str(i): norm(dims[i], **kwargs)
                                        for i in self.out_indices})

    def pretrained_init_cfg(self) -> Optional[dict]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        return next((cfg for cfg in cfgs
                     if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'), None)

    def is_pretrained_init(self) -> bool:
        return self.pretrained_init_cfg() is not None

    def stem_and_stages(self):
        return self.stem, list(self.stages)

    def init_weights(self):
        """The official VMamba-family init, then the ``Pretrained`` init_cfg's weights if any.

        Truncated-normal (0.02) Linear weights with zero biases, unit LayerNorms and Mamba's
        SSM init (every :class:`SelectiveSSM`); :meth:`init_extra` handles what a
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
            elif isinstance(module, SelectiveSSM):
                module.reset_parameters()
            else:
                self.init_extra(module)
        self.init_last()
        pretrained = self.pretrained_init_cfg()
        if pretrained is not None:
            from vssm_mm.checkpoint.fit import load_pretrained
            load_pretrained(self, pretrained['checkpoint'], pretrained.get('prefix'),
                            pretrained.get('map_location', 'cpu'))
        self._is_init = True

    def init_extra(self, module: nn.Module) -> None:
        """Family-specific init of a module the shared rules do not cover (default: keep)."""

    def init_last(self) -> None:
        """Family-specific init after the per-module rules (default: nothing)."""

    def init_arch(self, arch: Union[str, dict], required: Iterable[str] = (),
                  defaults: Optional[dict] = None) -> dict:
        """Settings of ``arch`` over ``defaults``; sets ``arch_name`` (``'custom'`` for dicts)."""
        settings = dict(defaults or {}, **self.parse_arch(arch, required))
        self.arch_name = self.arch_aliases.get(arch.lower(), arch.lower()) \
            if isinstance(arch, str) else 'custom'
        return settings

    def init_outputs(self, num_stages: int, out_indices, frozen_stages: int,
                     norm_eval: bool) -> None:
        """Check and set ``num_stages``, ``out_indices``, ``frozen_stages`` and ``norm_eval``."""
        self.num_stages = num_stages
        self.out_indices = self.parse_out_indices(out_indices, num_stages)
        self.frozen_stages = self.parse_frozen_stages(frozen_stages, num_stages)
        self.norm_eval = norm_eval

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        stem, stages = self.stem_and_stages()
        frozen = [stem] + list(stages[:self.frozen_stages])
        out_norms = getattr(self, 'out_norms', {})
        frozen += [out_norms[str(i)] for i in range(self.frozen_stages) if str(i) in out_norms]
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
