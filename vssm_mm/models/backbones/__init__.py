from .msvmamba import MSVMamba

__all__ = ['MSVMamba']
