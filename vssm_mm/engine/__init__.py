from .checkpointing import AtomicCheckpointHook
from .hooks import ProgressBarHook, ValidateBeforeTrainHook

__all__ = ['AtomicCheckpointHook', 'ProgressBarHook', 'ValidateBeforeTrainHook']
