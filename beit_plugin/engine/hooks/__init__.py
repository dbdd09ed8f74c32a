from .codebook_usage import CodebookUsageHook

__all__ = ['CodebookUsageHook']
