from .beit_pretrainer import BEiTPretrainer

__all__ = ['BEiTPretrainer']
