"""Image tokenizers (BEiT targets): VQ-KD, the trainable dVAE and the DALL-E
encoder, behind one target-generator interface (:class:`Tokenizer`)."""
from .base import Tokenizer
from .dvae import DALLEEncoder, DiscreteVAE, logit_laplace_norm
from .quantizer import NormEMAVectorQuantizer, kmeans_cosine
from .teachers import BackboneTeacher, HOGTeacher
from .vqkd import VQKDTokenizer, vqkd_from_mmpretrain

__all__ = [
    'Tokenizer', 'VQKDTokenizer', 'DiscreteVAE', 'DALLEEncoder',
    'NormEMAVectorQuantizer', 'kmeans_cosine', 'HOGTeacher',
    'BackboneTeacher', 'logit_laplace_norm', 'vqkd_from_mmpretrain'
]
