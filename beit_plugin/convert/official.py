"""The official code (microsoft/unilm ``beit/``, ``beit2/``) and timm, whose
backbone parameter names are ours, and OpenAI's DALL-E encoder."""
from .common import StateDict, drop_index_buffers, rename

# checkpoint entries of the official VQ-KD training that are no tokenizer
# weights (its own loader drops them too)
_VQKD_EXTRAS = ('teacher_model.', 'scaling_layer.', 'loss')


def beit_from_official(state_dict: StateDict) -> StateDict:
    """Official / timm BEiT -> the layout of our models.

    The backbone keys are ours already and go under ``backbone.``.
    Pretraining parts (``VisionTransformerForMaskedImageModeling[CLS]``):
    ``lm_head`` -> ``head.cls_head`` (:class:`BEiTMIMHead`); BEiT v2's
    ``cls_pt_layers`` -> ``neck.cls_pt_layers`` and its final ``norm``,
    shared by both branches, -> ``neck.norm``
    (:class:`BEiTV2PatchAggregation`). Fine-tuned / timm classifiers:
    ``head`` -> ``head.fc`` (MMPretrain's ``LinearClsHead``). Relative
    position index buffers are dropped.

    Raises:
        ValueError: a BEiT v2 checkpoint trained with ``shared_lm_head=False``
            (``cls_pt_norm``, ``cls_pt_lm_head``), which our patch
            aggregation, sharing the MIM head and norm, cannot hold.
    """
    state_dict = drop_index_buffers(state_dict)
    if any(k.startswith(('cls_pt_norm.', 'cls_pt_lm_head.'))
           for k in state_dict):
        raise ValueError(
            'checkpoint is a BEiT v2 pretraining with shared_lm_head=False '
            '(cls_pt_norm / cls_pt_lm_head); our patch aggregation shares '
            'the MIM head and norm: convert only its backbone '
            "(layout='backbone')")
    v2 = any(k.startswith('cls_pt_layers.') for k in state_dict)
    renames = [
        (r'^lm_head\.', 'head.cls_head.'),
        (r'^head\.', 'head.fc.'),
        (r'^cls_pt_layers\.', 'neck.cls_pt_layers.'),
        *([(r'^norm\.', 'neck.norm.')] if v2 else []),
        (r'^', 'backbone.'),
    ]
    return {rename(k, renames): v for k, v in state_dict.items()}


def vqkd_from_official(state_dict: StateDict) -> StateDict:
    """Official BEiT v2 VQ-KD (``beit2/modeling_vqkd.py``) ->
    :class:`VQKDTokenizer`.

    Its encoder and decoder are the official fine-tuning ViT with mean
    pooling, whose final norm is ``fc_norm`` (``norm`` is an identity): that
    becomes our ``encoder.norm`` / ``decoder.norm``. The teacher, scaling
    layer and loss entries are dropped; ``encode_task_layer``,
    ``decode_task_layer`` and ``quantize`` keep their names (the
    quantizer's load hook turns the official usage statistic
    ``quantize.cluster_size`` into its EMA state).
    """
    renames = [(r'^(encoder|decoder)\.fc_norm\.', r'\1.norm.')]
    return {rename(k, renames): v
            for k, v in drop_index_buffers(state_dict).items()
            if not k.startswith(_VQKD_EXTRAS)}


def dalle_from_openai(state_dict: StateDict) -> StateDict:
    """OpenAI's DALL-E encoder state dict, as it is, for
    :class:`DALLEEncoder` (whose load hook reads OpenAI's ``.w`` / ``.b``
    names; MMPretrain's ``DALL-E`` and the unilm code use the same layout).

    OpenAI publishes ``encoder.pkl``, a pickled module: loading it runs code
    from the file, which we never do. Turn it into a state dict once, in an
    environment you trust with OpenAI's ``dall_e`` package installed::

        import torch
        encoder = torch.load('encoder.pkl', map_location='cpu',
                             weights_only=False)  # runs the pickle's code
        torch.save(encoder.state_dict(), 'dalle_encoder.pth')

    then convert and validate ``dalle_encoder.pth`` with
    ``tools/convert_checkpoint.py dalle_encoder.pth OUT --from openai
    --model dalle``.
    """
    return dict(state_dict)
