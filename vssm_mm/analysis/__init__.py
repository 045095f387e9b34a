from .complexity import count_flops, count_params, model_complexity

__all__ = ['count_flops', 'count_params', 'model_complexity']
