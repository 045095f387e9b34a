from .efficientvmamba import EfficientVMamba
from .groupmamba import GroupMamba
from .localvim import LocalVim
from .localvmamba import LocalVMamba
from .msvmamba import MSVMamba

__all__ = ['EfficientVMamba', 'GroupMamba', 'LocalVim', 'LocalVMamba', 'MSVMamba']
