from .efficientvmamba import EfficientVMamba
from .groupmamba import GroupMamba
from .localmamba import LocalVim, LocalVMamba
from .msvmamba import MSVMamba

__all__ = ['EfficientVMamba', 'GroupMamba', 'LocalVim', 'LocalVMamba', 'MSVMamba']
