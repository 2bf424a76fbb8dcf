"""Any image-text model transformers ships, through its family's own processor and model class.

``AutoProcessor`` gives the processor the folder was saved with (it expands image placeholders, tiles,
pools and returns every keyword the model needs), ``AutoModelForImageTextToText`` the family's model
(LLaVA, LLaVA-NeXT, Gemma 3, PaliGemma, Idefics3, Mllama...). The :class:`~lens.loaded.LoadedModel`
keeps the image processor as ``processor`` (pixels for overlays) and the whole processor as
``extras["processor"]``: :func:`lens.vlm.prepare` runs it. Processors that need a package this install
lacks (torchvision for video processors, num2words for SmolVLM) are refused in one line naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lens.errors import ModelUnavailableError
from lens.loaded import LoadedModel

# packages some processors import, and how each shows up in transformers' messages
_OPTIONAL = {"torchvision": re.compile(r"torchvision", re.I), "num2words": re.compile(r"num2words", re.I)}


def missing_package(err: BaseException) -> str | None:
    """The optional package an import-time error of a processor names, if any."""
    text = str(err)
    return next((pkg for pkg, pattern in _OPTIONAL.items() if pattern.search(text)), None)


def load(name_or_path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
         trust_remote_code: bool = False) -> LoadedModel:
    """The model of a folder or hub id with a vision and a text config, and its processor.

    Raises :class:`ModelUnavailableError` with one line when it cannot be had here: offline and not
    cached, or a processor that needs a package that is not installed.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    from lens.zoo.hub import hub_reachable
    from lens.zoo.tiny_vlm import vlm_facts

    name = str(name_or_path)
    offline = not Path(name_or_path).is_dir() and not hub_reachable()  # only the cache: fail at once
    kw = dict(local_files_only=offline, trust_remote_code=trust_remote_code)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would break the CLI's one-line output
    try:
        try:
            processor = AutoProcessor.from_pretrained(name_or_path, **kw)
        except (ImportError, ValueError, AttributeError) as err:
            pkg = missing_package(err)
            if pkg is None:
                raise
            raise ModelUnavailableError(f"{name!r} needs the package {pkg} for its processor, which is not "
                                        f"installed: pip install {pkg}") from None
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ModelUnavailableError(f"{name!r} has no image processor with its tokenizer (expected a "
                                        f"processor_config.json or preprocessor_config.json beside the model, "
                                        f"got {type(processor).__name__})")
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, **kw)
    except ModelUnavailableError:
        raise
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(f"cannot load {name!r} from the Hugging Face hub or its local cache "
                                    f"(offline, or not a model id?): {first[:200]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model = model.to(device).eval()
    facts = vlm_facts(model.config, name=name, architecture=type(model).__name__)
    return LoadedModel(model=model, tokenizer=processor.tokenizer, facts=facts, processor=processor.image_processor,
                       extras={"processor": processor})
