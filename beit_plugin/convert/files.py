"""Reading checkpoint files without ever running code from them."""
from pathlib import Path
from typing import Dict, Union

from safetensors.torch import load_file

from beit_plugin.checkpoint_loading import (UnsafeCheckpointError,
                                            safe_torch_load)

# the weight files of a transformers model directory, in order of preference
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def read_weights(path: Union[str, Path]) -> Dict:
    """The content of a checkpoint: a ``.safetensors`` file (read with
    safetensors), any other file (``.pth`` / ``.pt`` / ``.bin``, with
    ``torch.load(weights_only=True)`` and the data-only allowlist of
    :func:`beit_plugin.checkpoint_loading.safe_torch_load`), or a
    transformers model directory (its ``model.safetensors``, else
    ``pytorch_model.bin``).

    Raises:
        FileNotFoundError: no such file, or a directory without weights.
        UnsafeCheckpointError: a pickle that would run code when loaded; it
            is not loaded, and the message says how to make a state dict.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES
                 if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f'{path} is a directory without {" or ".join(HF_WEIGHT_FILES)}'
                ' (a transformers model directory has one)')
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist')
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors' own error type varies
            raise ValueError(
                f'{path} is not a readable safetensors file '
                f'({type(err).__name__}: {err})') from err
    try:
        content = safe_torch_load(str(path), map_location='cpu')
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f'{err} Nothing was executed. A file that only its publisher can '
            'vouch for (e.g. OpenAI\'s DALL-E encoder.pkl) has to be turned '
            'into a plain state dict once, in an environment you trust, as '
            'README ("Checkpoints from other code bases") shows.') from err
    if not isinstance(content, dict):
        raise ValueError(
            f'{path} holds a {type(content).__name__}, not a checkpoint: a '
            'state dict (name -> tensor) or a dict holding one under '
            "'state_dict' / 'model' / 'module'")
    return content
