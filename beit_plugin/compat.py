"""Fixes for faults of the upstream OpenMMLab packages on today's stack.

This module is the one place where ``beit_plugin`` changes code that is not
its own. Each fix is an entry of :data:`FIXES`: its name, the upstream fault
it works around (with the issue or the upstream code), a ``needed()``
predicate and ``apply()``. ``import beit_plugin`` runs :func:`apply_fixes`,
which applies the fixes whose predicate holds, and only those: on the
package versions that have the fault (``importlib.metadata`` versions, up to
the newest release checked, :data:`CHECKED`) and in the situation that
triggers it (mmcv-lite, no ``pkg_resources``, an editable install,
NumPy >= 2).
:func:`describe_active_fixes` is the one line our tools log at start.

The fixes, in the order they are applied:

``mmcv_ops_stand_in``
    MMSegmentation <= 1.2.2 imports ``point_sample`` / ``sigmoid_focal_loss``
    from ``mmcv.ops`` unguarded (``mmseg/models/decode_heads/point_head.py``,
    ``mmseg/models/losses/focal_loss.py``), and mmcv-lite has no compiled
    ``mmcv._ext``, so ``import mmseg.models`` fails with ``No module named
    'mmcv._ext'`` (open-mmlab/mmsegmentation#126 and its many duplicates).
    Needed: mmseg <= 1.2.2 installed and mmcv without ``mmcv._ext``. A
    pure-PyTorch stand-in becomes ``mmcv.ops``; a full mmcv is never
    shadowed.
``local_checkpoints_weights_only``
    MMEngine <= 0.10.7's ``load_from_local`` (the ``''`` scheme of
    ``CheckpointLoader``: ``Runner.resume``, ``load_from``, ``Pretrained``
    ``init_cfg``, ``mmseg.apis.init_model``) calls ``torch.load`` without
    ``weights_only``: torch >= 2.6 then refuses MMEngine's own runner
    checkpoints (``HistoryBuffer`` in ``message_hub``,
    open-mmlab/mmengine#1655), older torch unpickles with code execution
    allowed. The scheme is served by
    :func:`beit_plugin.checkpoint_loading.load_from_local_weights_only`:
    ``weights_only=True`` with a data-only allowlist. Process-wide, as the
    fault is (every caller of MMEngine's loader hits it).
``remote_checkpoints_weights_only``
    MMEngine <= 0.10.7 loads ``http(s)://`` checkpoints with
    ``torch.hub.load_state_dict_from_url`` (``weights_only=False``), and the
    model-zoo schemes resolve to such URLs: a downloaded pickle can run
    code. Served by :mod:`beit_plugin.checkpoint_schemes` (weights-only,
    model-zoo schemes refused).
``scope_prefix_from_any_scope``
    MMEngine <= 0.10.7's ``Registry.get`` resolves a scope prefix
    (``type='beit_plugin.BEiT'``) only among the root registry's direct
    children, and our registries are children of MMPretrain's: from an
    MMSegmentation config the prefix would not resolve. Our registries are
    attached to MMEngine's roots (:func:`beit_plugin.registry.attach_to_root`).
``package_helpers_without_pkg_resources``
    MMEngine <= 0.10.7's ``is_installed`` / ``get_installed_path`` import
    ``pkg_resources``, which setuptools >= 81 no longer ships, so a config
    inheriting ``mmpretrain::`` / ``mmseg::`` bases fails to load (fixed
    upstream by open-mmlab/mmengine#1676, after 0.10.7). Needed when
    ``pkg_resources`` is missing: MMEngine's helpers are replaced by
    :mod:`importlib.metadata` versions (:func:`is_installed`,
    :func:`get_installed_path`). (A config is parsed before its
    ``custom_imports`` run, so MMSegmentation's own ``tools/train.py`` still
    needs ``pkg_resources``: ``setup.py`` keeps setuptools < 81.)
``editable_install_config_scope``
    With ``pkg_resources`` present, MMEngine <= 0.10.7's
    ``get_installed_path`` looks for a package next to its metadata, which
    an editable install (PEP 660) does not put there: ``beit_plugin::``
    config bases of a checkout would not resolve. Needed for an editable
    install of beit-plugin; only the answer for beit-plugin itself changes.
``adjust_hue_numpy2``
    mmcv 2.0.0rc1 to 2.2.0 (mmcv and mmcv-lite; 1.5.1 to 1.7.2 and the
    upstream main branch have the same line) shift the hue in
    ``mmcv.image.adjust_hue`` by ``np.uint8(hue_factor * 255)``, which
    NumPy >= 2 refuses for a negative factor (``OverflowError: Python
    integer -25 out of bounds for uint8``), so MMPretrain's ``ColorJitter``
    with ``hue > 0`` fails on about half of its calls. Not reported to
    open-mmlab/mmcv; fixed in the fork VBTI-development/onedl-mmcv#41, and
    in torchvision's copy of the line by pytorch/vision#8463. Needed: such
    an mmcv and NumPy >= 2. :func:`adjust_hue` (mmcv's code, with the shift
    NumPy 1 computed: truncated, modulo 256) replaces ``adjust_hue`` in
    ``mmcv``, ``mmcv.image`` and ``mmcv.image.photometric``, and nothing
    else.

Not fixes, and so elsewhere: the weights-only loader our own code calls
(:mod:`beit_plugin.checkpoint_loading`), bfloat16 AMP on a CPU
(:class:`beit_plugin.engine.optimizers.BF16AmpOptimWrapper`, an optimizer
wrapper configs name), distributed training without CUDA
(:mod:`beit_plugin.distributed`: gloo, CPU DDP, SyncBN as BN, MMEngine's
``init_dist`` without ``torch.cuda.set_device``; our launch tools call it),
and the ``_scope_`` an inherited ``collate_fn`` carries
(:func:`beit_plugin.datasets.collate.default_collate`, which our configs
name). numpy 2 removed ``np.in1d``, which only MMPretrain's retrieval
metrics call; they are not on BEiT's path, so nothing is patched.
"""
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger, print_log
from mmengine.utils import digit_version

#: The newest release of each upstream package checked for the faults
#: fixed here. A fix gated on a package applies up to this version; a newer
#: release is assumed to have fixed the fault (re-check, then move the
#: bound).
CHECKED = {'mmengine': '0.10.7', 'mmsegmentation': '1.2.2', 'mmcv': '2.2.0',
           'mmcv-lite': '2.2.0'}


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_checked_fault(distribution: str) -> bool:
    """Whether ``distribution`` is installed in a version up to
    :data:`CHECKED` (one with the faults fixed here)."""
    version = installed_version(distribution)
    return version is not None and digit_version(version) <= digit_version(
        CHECKED[distribution])


# ---------------------------------------------------------------------------
# mmcv_ops_stand_in: a pure-PyTorch stand-in for ``mmcv.ops``
# ---------------------------------------------------------------------------


def _missing_compiled_op(name: str) -> ModuleNotFoundError:
    """The error raised for an ``mmcv.ops`` member the stand-in lacks.

    It is a :class:`ModuleNotFoundError` (an :class:`ImportError`) because
    upstream code probes optional ops with
    ``try: from mmcv.ops import X / except ModuleNotFoundError:``.
    """
    return ModuleNotFoundError(
        f'mmcv.ops.{name} needs the compiled ops of full mmcv '
        '(`pip install "mmcv>=2.0.0,<2.2.0"` in place of mmcv-lite). This '
        "environment has mmcv-lite, whose `mmcv.ops` is beit_plugin's "
        'pure-PyTorch stand-in, which only provides `point_sample`.',
        name='mmcv._ext')


def point_sample(input: torch.Tensor,
                 points: torch.Tensor,
                 align_corners: bool = False,
                 **kwargs) -> torch.Tensor:
    """Sample ``input`` at ``points``, as ``mmcv.ops.point_sample`` does.

    Args:
        input (torch.Tensor): Feature map, shape (N, C, H, W).
        points (torch.Tensor): Point coordinates normalised to
            ``[0, 1] x [0, 1]`` in (x, y) order, shape (N, P, 2) or
            (N, Hgrid, Wgrid, 2).
        align_corners (bool): Passed to
            :func:`torch.nn.functional.grid_sample`.
        **kwargs: Other arguments of ``grid_sample`` (``mode``,
            ``padding_mode``).

    Returns:
        torch.Tensor: Shape (N, C, P) or (N, C, Hgrid, Wgrid).
    """
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(
        input, points * 2.0 - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def sigmoid_focal_loss(*args, **kwargs) -> NoReturn:
    """Placeholder for the compiled ``mmcv.ops.sigmoid_focal_loss``.

    MMSegmentation's ``FocalLoss`` only calls it for CUDA tensors (on CPU it
    uses its own PyTorch implementation), so importing it must work while
    calling it needs full mmcv.

    Raises:
        ModuleNotFoundError: Always, saying that full mmcv is needed.
    """
    raise _missing_compiled_op('sigmoid_focal_loss')


class _MmcvOpsStandIn(types.ModuleType):
    """The ``mmcv.ops`` module used when mmcv's compiled ops are missing."""

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith('__'):  # module protocol (__path__, __file__, ...)
            raise AttributeError(
                f"beit_plugin's stand-in module 'mmcv.ops' has no attribute "
                f'{name!r}')
        raise _missing_compiled_op(name)


def _mmcv_lacks_compiled_ops() -> bool:
    """Whether mmcv is installed without its compiled ``mmcv._ext``."""
    if importlib.util.find_spec('mmcv') is None:
        return False
    return importlib.util.find_spec('mmcv._ext') is None


def install_mmcv_ops_stand_in() -> bool:
    """Make ``import mmcv.ops`` work on mmcv-lite.

    When mmcv is installed without ``mmcv._ext`` (mmcv-lite), a pure-PyTorch
    module becomes ``sys.modules['mmcv.ops']`` (and ``mmcv.ops``). It provides
    :func:`point_sample` (a real implementation) and
    :func:`sigmoid_focal_loss` (raises, needs full mmcv); any other member
    raises :class:`ModuleNotFoundError` naming full mmcv, which is what
    upstream ``try/except ModuleNotFoundError`` imports expect. With a full
    mmcv, or without mmcv, nothing is changed.

    Returns:
        bool: Whether the stand-in is in place.
    """
    if isinstance(sys.modules.get('mmcv.ops'), _MmcvOpsStandIn):
        return True
    if not _mmcv_lacks_compiled_ops():
        return False
    import mmcv
    ops = _MmcvOpsStandIn(
        'mmcv.ops', 'Pure-PyTorch stand-in for mmcv.ops (beit_plugin.compat)')
    ops.__spec__ = importlib.machinery.ModuleSpec(
        'mmcv.ops', loader=None, origin=__name__)
    ops.point_sample = point_sample
    ops.sigmoid_focal_loss = sigmoid_focal_loss
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops
    return True


def _mmcv_ops_stand_in_needed() -> bool:
    """mmseg (<= 1.2.2) installed and mmcv without its compiled
    ``mmcv._ext`` (mmcv-lite)."""
    return (_mmcv_lacks_compiled_ops()
            and has_checked_fault('mmsegmentation'))


# ---------------------------------------------------------------------------
# local_checkpoints_weights_only / remote_checkpoints_weights_only
# ---------------------------------------------------------------------------


def register_weights_only_checkpoint_loader() -> None:
    """Make MMEngine's local loader
    :func:`~beit_plugin.checkpoint_loading.load_from_local_weights_only`.

    ``CheckpointLoader`` serves every path without a URL scheme (prefix
    ``''``) with it, so ``Runner.resume``, ``load_from`` and
    ``init_cfg=dict(type='Pretrained', checkpoint=<local file>)`` all load
    with ``weights_only=True``.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    from .checkpoint_loading import load_from_local_weights_only
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_weights_only, force=True)


def _register_remote_loaders() -> None:
    from .checkpoint_schemes import register_weights_only_remote_loaders
    register_weights_only_remote_loaders()


def _mmengine_checkpoint_fault() -> bool:
    return has_checked_fault('mmengine')


# ---------------------------------------------------------------------------
# scope_prefix_from_any_scope
# ---------------------------------------------------------------------------


def _scope_prefix_needed() -> bool:
    from . import registry
    return has_checked_fault('mmengine') and not all(
        registry.reachable_from_root(r) for r in registry._NESTED)


def _attach_registries() -> None:
    from .registry import attach_to_root
    attach_to_root()


# ---------------------------------------------------------------------------
# package_helpers_without_pkg_resources / editable_install_config_scope
# ---------------------------------------------------------------------------

#: Our distribution, whose folder ``beit_plugin::`` config bases name.
DISTRIBUTION = 'beit-plugin'


def _distribution(package: str):
    """The installed distribution named ``package``, or None."""
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(package: str) -> bool:
    """Whether ``package`` is installed (as a distribution, or importable)."""
    if _distribution(package) is not None:
        return True
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin is not None


def _module_dir(module: str) -> Optional[str]:
    """The folder the import system loads ``module`` from, or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(spec.origin)


def get_installed_path(package: str) -> str:
    """The folder of ``package``'s top-level module, like MMEngine's helper
    (``mmcv-lite`` -> ``.../site-packages/mmcv``).

    An editable install (PEP 660) leaves only metadata and an import hook
    beside other packages, so its module is not next to its metadata, where
    MMEngine's helper looks (``beit-plugin`` -> ``<checkout>/beit_plugin``, not
    ``.../site-packages/beit_plugin``): then the import system says where it
    is.
    """
    dist = _distribution(package)
    if dist is None:
        path = _module_dir(package)
        if path is None:
            raise importlib.metadata.PackageNotFoundError(package)
        return path
    location = str(dist.locate_file(''))
    path = os.path.join(location, package)
    if os.path.exists(path):
        return path
    top_level = (dist.read_text('top_level.txt') or '').split()
    module = top_level[0] if top_level else package.replace('-', '_')
    path = os.path.join(location, module)
    if os.path.exists(path):
        return path
    return _module_dir(module) or path



def _pkg_resources_available() -> bool:
    """Whether ``import pkg_resources`` would find the module (without
    importing it: setuptools warns on import)."""
    try:
        return importlib.util.find_spec('pkg_resources') is not None
    except (ImportError, ValueError):
        return False


def _mmengine_helper_modules() -> List[types.ModuleType]:
    from mmengine import utils as mmengine_utils
    from mmengine.config import config as mmengine_config
    from mmengine.utils import package_utils
    return [package_utils, mmengine_utils, mmengine_config]


def replace_pkg_resources_helpers() -> None:
    """Use :func:`is_installed` / :func:`get_installed_path` in MMEngine in
    place of its own, which need ``pkg_resources``."""
    for module in _mmengine_helper_modules():
        module.is_installed = is_installed
        module.get_installed_path = get_installed_path


def _package_helpers_needed() -> bool:
    return has_checked_fault('mmengine') and not _pkg_resources_available()


def _editable_install() -> bool:
    """Whether beit-plugin's package is not next to its metadata (an
    editable install), where MMEngine's ``get_installed_path`` looks."""
    dist = _distribution(DISTRIBUTION)
    if dist is None:
        return False
    beside = os.path.join(str(dist.locate_file('')), 'beit_plugin')
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.realpath(beside) != os.path.realpath(here)


def _editable_scope_needed() -> bool:
    return (has_checked_fault('mmengine') and _pkg_resources_available()
            and _editable_install())


def answer_for_own_package(original: Callable[[str], str]
                           ) -> Callable[[str], str]:
    """``original`` (MMEngine's ``get_installed_path``), except for
    beit-plugin, whose folder :func:`get_installed_path` finds."""
    if getattr(original, '__beit_plugin_own__', False):
        return original

    def own_package_path(package: str) -> str:
        if package == DISTRIBUTION:
            return get_installed_path(package)
        return original(package)

    own_package_path.__beit_plugin_own__ = True
    own_package_path.__wrapped__ = original
    own_package_path.__doc__ = original.__doc__
    return own_package_path


def find_editable_install() -> None:
    """Let MMEngine's ``get_installed_path`` find an editable install of
    beit-plugin; every other package is MMEngine's to answer."""
    for module in _mmengine_helper_modules():
        module.get_installed_path = answer_for_own_package(
            module.get_installed_path)


# ---------------------------------------------------------------------------
# adjust_hue_numpy2: mmcv's adjust_hue with NumPy 1's uint8 wraparound
# ---------------------------------------------------------------------------

#: The first mmcv 2 release, the fix's lower bound: mmcv 1.5.1 to 1.7.2
#: have the fault too, but MMPretrain 1.x (and so beit-plugin) needs mmcv 2,
#: and 1.5.1 to 1.6.1 have no ``backend`` argument.
MMCV_2 = '2.0.0rc1'

#: Where mmcv's ``adjust_hue`` is looked up (MMPretrain's ``ColorJitter``
#: calls ``mmcv.adjust_hue``), module name -> the function found there
#: before :func:`replace_adjust_hue` replaced it.
UPSTREAM_ADJUST_HUE: Dict[str, Callable] = {}


def hue_shift(hue_factor: float) -> np.uint8:
    """``np.uint8(hue_factor * 255)`` as NumPy 1 computed it: truncated
    toward zero, then wrapped modulo 256 (-0.1 -> -25 -> 231)."""
    return np.uint8(int(hue_factor * 255) % 256)


def adjust_hue(img: np.ndarray,
               hue_factor: float,
               backend: Optional[str] = None) -> np.ndarray:
    """``mmcv.image.adjust_hue`` (mmcv 2.x) without its NumPy 2 fault.

    mmcv shifts the HSV hue channel by ``np.uint8(hue_factor * 255)``, which
    NumPy 2 refuses for a negative factor (``OverflowError``); here the
    shift is :func:`hue_shift`, the value NumPy 1 gave, and everything else
    is mmcv's code: the same checks, backends and results.

    Args:
        img (np.ndarray): BGR image, shape (H, W, 3).
        hue_factor (float): Shift of the hue channel, in [-0.5, 0.5] (a
            fraction of the full circle).
        backend (str | None): ``'cv2'`` or ``'pillow'``; None uses mmcv's
            ``imread_backend`` as ``mmcv.image.photometric`` sees it.
            Defaults to None.

    Returns:
        np.ndarray: The hue-shifted image, shape and dtype of ``img``.
    """
    from mmcv.image import photometric
    if backend is None:
        backend = photometric.imread_backend
    if backend not in ['cv2', 'pillow']:
        raise ValueError(f'backend: {backend} is not supported.'
                         f"Supported backends are 'cv2', 'pillow'")
    if not (-0.5 <= hue_factor <= 0.5):
        raise ValueError(f'hue_factor:{hue_factor} is not in [-0.5, 0.5].')
    if not (isinstance(img, np.ndarray) and (img.ndim in {2, 3})):
        raise TypeError('img should be ndarray with dim=[2 or 3].')
    shift = hue_shift(hue_factor)
    if backend == 'pillow':
        from PIL import Image
        assert img.dtype == np.uint8, 'Pillow backend only support uint8 type'
        pil_image = Image.fromarray(np.ascontiguousarray(img[..., ::-1]))
        input_mode = pil_image.mode  # 'RGB' (mmcv passes mode='RGB')
        h, s, v = pil_image.convert('HSV').split()
        np_h = np.array(h, dtype=np.uint8)
        with np.errstate(over='ignore'):  # uint8 addition wraps around
            np_h += shift
        h = Image.fromarray(np_h, 'L')
        pil_image = Image.merge('HSV', (h, s, v)).convert(input_mode)
        return np.array(pil_image, dtype=img.dtype)[..., ::-1]
    import cv2
    dtype = img.dtype
    img = img.astype(np.uint8)
    h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL))
    h = h.astype(np.uint8)
    with np.errstate(over='ignore'):  # uint8 addition wraps around
        h += shift
    hsv_img = cv2.merge([h, s, v])
    return cv2.cvtColor(hsv_img, cv2.COLOR_HSV2BGR_FULL).astype(dtype)


def _adjust_hue_modules() -> List[types.ModuleType]:
    """The modules that bind mmcv's ``adjust_hue``: ``mmcv`` (which
    MMPretrain's ``ColorJitter`` calls), ``mmcv.image`` and
    ``mmcv.image.photometric``."""
    import mmcv
    import mmcv.image
    from mmcv.image import photometric
    return [mmcv, mmcv.image, photometric]


def replace_adjust_hue() -> None:
    """Make mmcv's ``adjust_hue`` :func:`adjust_hue` where it is bound;
    the functions replaced are kept in :data:`UPSTREAM_ADJUST_HUE`."""
    for module in _adjust_hue_modules():
        found = getattr(module, 'adjust_hue', None)
        if found is not None and found is not adjust_hue:
            UPSTREAM_ADJUST_HUE.setdefault(module.__name__, found)
            module.adjust_hue = adjust_hue


def _mmcv_with_hue_fault() -> bool:
    """mmcv or mmcv-lite 2.x up to :data:`CHECKED` installed."""
    for distribution in ('mmcv', 'mmcv-lite'):
        version = installed_version(distribution)
        if version is not None and (
                digit_version(MMCV_2) <= digit_version(version) <=
                digit_version(CHECKED[distribution])):
            return True
    return False


def _adjust_hue_needed() -> bool:
    """An mmcv 2.x with the fault (:func:`_mmcv_with_hue_fault`) and
    NumPy >= 2, which refuses the out-of-range ``np.uint8``."""
    numpy_version = installed_version('numpy')
    return (_mmcv_with_hue_fault() and numpy_version is not None
            and digit_version(numpy_version) >= digit_version('2.0.0'))


# ---------------------------------------------------------------------------
# The table, applying and logging
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    """One fix of an upstream fault.

    Attributes:
        name: Short name, as logged.
        upstream: The fault and where it is (issue, upstream code).
        needed: Whether the fault is present here (versions, situation).
        apply: Works around it; called once, only when ``needed()``.
    """
    name: str
    upstream: str
    needed: Callable[[], bool]
    apply: Callable[[], Any]


FIXES: Tuple[Fix, ...] = (
    Fix('mmcv_ops_stand_in',
        'mmseg<=1.2.2 imports mmcv.ops unguarded; mmcv-lite has no '
        'mmcv._ext (open-mmlab/mmsegmentation#126)',
        _mmcv_ops_stand_in_needed, install_mmcv_ops_stand_in),
    Fix('local_checkpoints_weights_only',
        'mmengine<=0.10.7 load_from_local: torch.load without weights_only '
        '(open-mmlab/mmengine#1655)',
        _mmengine_checkpoint_fault, register_weights_only_checkpoint_loader),
    Fix('remote_checkpoints_weights_only',
        'mmengine<=0.10.7 load_from_http: load_state_dict_from_url with '
        'weights_only=False',
        _mmengine_checkpoint_fault, _register_remote_loaders),
    Fix('scope_prefix_from_any_scope',
        "mmengine<=0.10.7 Registry.get: a scope prefix resolves only among "
        "the root's direct children",
        _scope_prefix_needed, _attach_registries),
    Fix('package_helpers_without_pkg_resources',
        'mmengine<=0.10.7 is_installed/get_installed_path need '
        'pkg_resources (open-mmlab/mmengine#1676)',
        _package_helpers_needed, replace_pkg_resources_helpers),
    Fix('editable_install_config_scope',
        'mmengine<=0.10.7 get_installed_path misses an editable install',
        _editable_scope_needed, find_editable_install),
    Fix('adjust_hue_numpy2',
        'mmcv 2.0.0rc1-2.2.0 adjust_hue: np.uint8(hue_factor * 255) raises '
        'OverflowError on numpy>=2 for a negative factor (ColorJitter hue>0; '
        'VBTI-development/onedl-mmcv#41)',
        _adjust_hue_needed, replace_adjust_hue),
)

_ACTIVE: Dict[str, Fix] = {}


def active_fixes() -> List[str]:
    """Names of the fixes applied in this process, in order."""
    return list(_ACTIVE)


def describe_active_fixes() -> str:
    """The one line that says which fixes are active, and why."""
    if not _ACTIVE:
        return 'beit_plugin upstream fixes active: none'
    return 'beit_plugin upstream fixes active: ' + '; '.join(
        f'{fix.name} ({fix.upstream})' for fix in _ACTIVE.values())


def log_active_fixes(logger: Any = 'current') -> None:
    """Log :func:`describe_active_fixes` (MMEngine's ``print_log``)."""
    print_log(describe_active_fixes(), logger=logger, level=logging.INFO)


def apply_fixes() -> List[str]:
    """Apply each fix of :data:`FIXES` that is needed and not yet applied;
    safe to call again. Logs the active fixes when it applied one: to the
    current MMEngine logger if there is one, else to the ``beit_plugin``
    Python logger (nothing is printed at import unless logging is set up).

    Returns:
        list: The names of the fixes this call applied.
    """
    applied = []
    for fix in FIXES:
        if fix.name not in _ACTIVE and fix.needed():
            fix.apply()
            _ACTIVE[fix.name] = fix
            applied.append(fix.name)
    if applied:
        log_active_fixes('current' if MMLogger._instance_dict else
                         logging.getLogger('beit_plugin'))
    return applied


# ---------------------------------------------------------------------------
# Names that moved out of this module, still importable from here
# ---------------------------------------------------------------------------

_MOVED = {
    'UnsafeCheckpointError': 'checkpoint_loading',
    'TruncatedCheckpointError': 'checkpoint_loading',
    'NotACheckpointError': 'checkpoint_loading',
    'checkpoint_safe_globals': 'checkpoint_loading',
    'safe_torch_load': 'checkpoint_loading',
    'load_from_local_weights_only': 'checkpoint_loading',
    'BF16AmpOptimWrapper': 'engine.optimizers',
    'configure_cpu_distributed': 'distributed',
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module = importlib.import_module(f'{__package__}.{_MOVED[name]}')
        return getattr(module, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


apply_fixes()
