from .feature_batch_norm import FeatureBatchNorm
from .patch_aggregation import BEiTV2PatchAggregation

__all__ = ['BEiTV2PatchAggregation', 'FeatureBatchNorm']
