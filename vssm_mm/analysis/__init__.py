from .complexity import FlopCounter, count_flops, count_params, model_complexity

__all__ = ['FlopCounter', 'count_flops', 'count_params', 'model_complexity']
