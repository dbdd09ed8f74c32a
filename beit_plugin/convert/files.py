"""Reading checkpoint files without ever running code from them."""
from pathlib import Path
from typing import Dict, Union

from safetensors.torch import load_file

from beit_plugin.compat import UnsafeCheckpointError, safe_torch_load

# the weight files of a transformers model directory, in order of preference
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def read_weights(path: Union[str, Path]) -> Dict:
    """The content of a checkpoint: a ``.safetensors`` file (read with
    safetensors), any other file (``.pth`` / ``.pt`` / ``.bin``, with
    ``torch.load(weights_only=True)`` and the data-only allowlist of
    :func:`beit_plugin.compat.safe_torch_load`), or a transformers model
    directory (its ``model.safetensors``, else ``pytorch_model.bin``).

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
        return load_file(str(path))
    try:
        return safe_torch_load(str(path), map_location='cpu')
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f'{err} Unpickling it would execute code from the file; nothing '
            'was executed. To keep only its tensors, in a separate '
            'environment: python -c "import torch; obj = '
            f"torch.load('{path}', weights_only=False); sd = "
            "obj.state_dict() if hasattr(obj, 'state_dict') else "
            "obj.get('model', obj.get('state_dict', obj)); torch.save({k: v "
            "for k, v in sd.items() if torch.is_tensor(v)}, "
            '\'state_dict.pth\')" then convert state_dict.pth.') from err
