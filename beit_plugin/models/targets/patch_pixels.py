"""Per-patch normalised pixels: the target of BEiT's pixel-regression
ablation ("visual tokens vs pixel regression", BEiT paper Table 4)."""
import torch
from torch import nn

from beit_plugin.registry import MODELS


@MODELS.register_module()
class PatchPixels(nn.Module):
    """Cut an image into ``patch_size`` squares and flatten each (pixel-major,
    RGB innermost, as MAE), optionally standardised per patch over all its
    values (MAE's ``norm_pix_loss``), so that the regression target says
    where the edges and textures of a patch are rather than its mean colour.

    It stands in for a tokenizer as :class:`BEiTPretrainer`'s
    ``target_generator``: no parameters, nothing to load.

    Args:
        patch_size (int): side of a patch in pixels.
        normalize (bool): standardise each patch. Defaults to True.
        eps (float): added to the variance. Defaults to 1e-6 (MAE's).
    """

    def __init__(self, patch_size: int, normalize: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.normalize = normalize
        self.eps = eps

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, N, patch_size ** 2 * 3)`` float,
        ``N = (H / p) * (W / p)`` row-major.

        Raises:
            ValueError: if ``H`` or ``W`` is not a multiple of the patch.
        """
        batch, channels, height, width = img.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f'image of {height} x {width} px does not split '
                             f'into {p} px patches')
        x = img.float().reshape(batch, channels, height // p, p, width // p,
                                p)
        x = x.permute(0, 2, 4, 3, 5, 1).reshape(
            batch, (height // p) * (width // p), p * p * channels)
        if self.normalize:
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True)
            x = (x - mean) / (var + self.eps).sqrt()
        return x
