"""Weights-only loading for every checkpoint scheme MMEngine knows.

MMEngine's ``CheckpointLoader`` picks a loader by the checkpoint's prefix.
The local one (no prefix) loads with ``torch.load(weights_only=True)``
where :mod:`beit_plugin.compat` registers
:func:`~beit_plugin.checkpoint_loading.load_from_local_weights_only`; the
remote ones of MMEngine <= 0.10.7 would still run code from a pickle:
``http(s)://`` goes through ``torch.hub.load_state_dict_from_url``, whose
``weights_only`` defaults to ``False``, on the download and on every later
load from the hub cache, and the name schemes (``torchvision://``,
``open-mmlab://``, ``mmcls://`` ...) resolve to such URLs. Here, registered
by :mod:`beit_plugin.compat` (fix ``remote_checkpoints_weights_only``):

- ``http://`` / ``https://``: downloaded into torch's hub cache as torch
  does (rank 0 first, then the other ranks), and the cached file, new or
  old, is read by :func:`~beit_plugin.checkpoint_loading.safe_torch_load`;
- ``s3://`` / ``petrel://``: read through MMEngine's file backend into
  memory, then the same;
- the schemes that name a model in a model zoo (``modelzoo://``,
  ``torchvision://``, ``open-mmlab://``, ``openmmlab://``, ``mmcls://``) and
  ``pavi://``: refused with :class:`UnsupportedCheckpointScheme`, which says
  to pass the file's path or URL instead.
"""
import io
import os
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoint_loading import safe_torch_load

HTTP_PREFIXES = ('http://', 'https://')
STORAGE_PREFIXES = (r'(\S+\:)?s3://', r'(\S+\:)?petrel://')
REFUSED_PREFIXES = ('modelzoo://', 'torchvision://', 'open-mmlab://',
                    'openmmlab://', 'mmcls://', 'pavi://')


class UnsupportedCheckpointScheme(ValueError):
    """A checkpoint named by a scheme that beit_plugin does not load."""


def _cached_download(url: str, model_dir: str = None) -> str:
    """The hub-cache path of ``url``, downloaded there when missing (as
    ``torch.hub.load_state_dict_from_url`` caches it)."""
    model_dir = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, os.path.basename(urlparse(url).path))
    if not os.path.isfile(path):
        torch.hub.download_url_to_file(url, path, progress=False)
    return path


def load_from_http_weights_only(filename: str,
                                map_location=None,
                                model_dir: str = None):
    """MMEngine's ``http(s)://`` loader, reading with ``weights_only=True``.

    Rank 0 downloads first; in a distributed run the other ranks wait, then
    read the same cache.

    Raises:
        UnsafeCheckpointError: The file would run code when unpickled.
    """
    rank, world_size = get_dist_info()
    if rank == 0:
        path = _cached_download(filename, model_dir)
    if world_size > 1:
        barrier()
        if rank > 0:
            path = _cached_download(filename, model_dir)
    return safe_torch_load(path, map_location=map_location,
                           source=f'{filename} (cached as {path})')


def load_from_storage_weights_only(filename: str, map_location=None,
                                   backend: str = 'petrel'):
    """MMEngine's ``s3://`` / ``petrel://`` loader, with ``weights_only``."""
    file_backend = get_file_backend(
        filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return safe_torch_load(buffer, map_location=map_location,
                               source=filename)


def refuse_checkpoint_scheme(filename: str, map_location=None):
    """The loader of the model-zoo schemes: always raises."""
    raise UnsupportedCheckpointScheme(
        f'Refusing to load checkpoint {filename!r}: beit_plugin loads '
        'checkpoints only from local files, http(s):// URLs and s3:// / '
        "petrel:// storage, always with weights_only=True; MMEngine's loader "
        f'for {filename.split("://")[0]}:// would unpickle it with code '
        'execution allowed. Pass the local path or the URL of the file '
        'instead.')


def register_weights_only_remote_loaders() -> None:
    """Serve MMEngine's remote checkpoint schemes with the loaders above
    (:mod:`beit_plugin.compat` calls it where MMEngine's would run code)."""
    CheckpointLoader.register_scheme(
        prefixes=HTTP_PREFIXES, loader=load_from_http_weights_only,
        force=True)
    CheckpointLoader.register_scheme(
        prefixes=STORAGE_PREFIXES, loader=load_from_storage_weights_only,
        force=True)
    CheckpointLoader.register_scheme(
        prefixes=REFUSED_PREFIXES, loader=refuse_checkpoint_scheme,
        force=True)
