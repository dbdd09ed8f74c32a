from .patch_aggregation import BEiTV2PatchAggregation

__all__ = ['BEiTV2PatchAggregation']
