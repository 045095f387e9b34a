from .hooks import ProgressBarHook, ValidateBeforeTrainHook

__all__ = ['ProgressBarHook', 'ValidateBeforeTrainHook']
