"""The rows masked-image modeling scores: CLS and the masked patches, which
the last blocks and the heads compute alone, and the one count the host
needs to size them, read without draining a GPU's queue."""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F


def start_host_read(value: torch.Tensor) -> Callable[[], int]:
    """Start bringing the 0-d integer ``value`` to the host; the returned
    function gives it as an ``int``.

    On a GPU the copy is queued on the current stream and the function waits
    for that copy alone (a CUDA event), not for the work queued after it, so
    the device stays busy while the host waits; elsewhere it reads at once.
    """
    if value.device.type != 'cuda':
        return lambda: int(value)
    host = torch.empty((), dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> int:
        copied.synchronize()
        return int(host)

    return read


def start_masked_rows(
        mask: torch.Tensor
) -> Callable[[], Tuple[torch.Tensor, torch.Tensor]]:
    """:func:`masked_rows` of ``mask``, begun now: the batch's largest
    masked count starts for the host (:func:`start_host_read`), and calling
    the returned function waits for it and builds the rows, so that work
    queued in between keeps the device busy."""
    counts = mask.sum(1)
    read_most = start_host_read(counts.max())

    def rows_and_scored() -> Tuple[torch.Tensor, torch.Tensor]:
        most = read_most()
        masked_first = torch.argsort((~mask).to(torch.uint8), dim=1,
                                     stable=True)[:, :most]
        rows = F.pad(masked_first + 1, (1, 0))
        scored = torch.arange(most, device=mask.device) < counts.unsqueeze(1)
        return rows, scored

    return rows_and_scored


def masked_rows(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The token rows that masked-image modeling scores.

    Args:
        mask: ``(B, N)`` bool, True = masked patch.

    Returns:
        ``rows`` ``(B, 1+M)`` long indices into the ``1+N`` tokens: CLS (0),
        then each sample's masked patches in ascending order, ``M`` the
        largest count in the batch, a sample with fewer padded with its
        first unmasked patches; and ``scored`` ``(B, M)`` bool, which of
        the ``M`` are masked.
    """
    return start_masked_rows(mask)()
