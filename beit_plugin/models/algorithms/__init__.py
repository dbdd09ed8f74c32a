from .beit_pretrainer import BEiTPretrainer
from .ibot_pretrainer import iBOTPretrainer

__all__ = ['BEiTPretrainer', 'iBOTPretrainer']
