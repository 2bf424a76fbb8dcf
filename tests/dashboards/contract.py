"""The contract folder (issue 11): what the real commands write on the tiny models, in one folder.

    lens scan tiny-llama --no-chat            -> scan/ (head scores, captures/prose-*, captures/repeated-tokens)
    lens ablate --sweep heads / --sweep layers -> sweep-heads/ (head scores), sweep-layers/ (curves)
    lens ablate --heads "L1H*" --compare-random 3 -> ablation/ (ablation.json)
    lens circuit --method eap --compare-patching --curve -> circuit/ (*.circuit.json, head scores, curves)
    lens stats --span 2:6 --topk 3             -> stats/ (stats run)
    lens capture tiny-dinov2 --image           -> image/000 (image layout + image.png)
    lens capture tiny-llama --dtype bfloat16 --sites pattern,q,k,z -> bf16/000
    lens heads cross-attention tiny-whisper --audio -> speech/ (agreement head scores, saliency token maps,
                                                   captures/audio-000 with an audio layout and audio.wav)
    lens.capture around generate() (no CLI command captures generation) -> generate/000 (tiny-llama,
                                                   a batch of 2 prompts, 6 steps: the prompt and 5 new tokens)

Built once per test session (about a minute on two CPU cores), through the real CLI entry point.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

_BUILT: dict[str, Path] = {}

TASK_ROWS = [{"prompt": f"{a}b{c} {a}x", "answer": "q", "corrupted": f"{d}b{c} {a}x", "distractor": "z"}
             for a, c, d in zip("abcd", "hgfe", "mnop")]
PROSE = "The cat sat on the mat and the dog sat on the log."


def _lens(*args) -> None:
    from lens.cli import main

    argv = sys.argv
    sys.argv = ["lens", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            pytest.fail(f"lens {' '.join(map(str, args))} exited {exc.code}")
    finally:
        sys.argv = argv


def build(root: Path) -> Path:
    """Write every kind of output into ``root`` with the real commands (see the module docstring)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    task = root.parent / "T.jsonl"  # the circuit and its results are named after the task file
    task.write_text("\n".join(json.dumps(r) for r in TASK_ROWS) + "\n")
    image = root.parent / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(image)
    _lens("scan", "tiny-llama", "--no-chat", "--out", root / "scan")
    _lens("ablate", "tiny-llama", "--task", task, "--sweep", "heads", "--out", root / "sweep-heads")
    _lens("ablate", "tiny-llama", "--task", task, "--sweep", "layers", "--out", root / "sweep-layers")
    _lens("ablate", "tiny-llama", "--task", task, "--heads", "L1H*", "--compare-random", "3", "--out", root / "ablation")
    _lens("circuit", "tiny-llama", "--task", task, "--method", "eap", "--top-n", "10", "--compare-patching",
          "--curve", "--edge-sizes", "5,10,20", "--head-sizes", "2,4,8", "--out", root / "circuit")
    _lens("stats", "tiny-llama", "--prompt", PROSE, "--span", "2:6", "--topk", "3", "--out", root / "stats")
    _lens("capture", "tiny-dinov2", "--image", image, "--out", root / "image")
    _lens("capture", "tiny-llama", "-p", "The quick brown fox jumps over the lazy dog.", "--dtype", "bfloat16",
          "--sites", "pattern,q,k,z", "--out", root / "bf16")
    from lens.audio import save_wav

    audio = root.parent / "tone.wav"
    t = np.arange(24_000) / 16_000
    save_wav(audio, (0.3 * np.sin(2 * np.pi * 440 * t) * (t < 1.0)).astype(np.float32), 16_000)
    _lens("heads", "cross-attention", "tiny-whisper", "--audio", audio, "--out", root / "speech")
    write_generation_capture(root / "generate" / "000")
    return root


GENERATE_PROMPTS = ["The cat sat on the mat", "A dog ran in the parks"]  # the same length in tiny-llama's tokens
GENERATE_STEPS = 6


def write_generation_capture(folder: Path) -> Path:
    """A capture across ``generate()`` (one step per forward pass) of a batch of two prompts."""
    import torch

    import lens

    lm = lens.load("tiny-llama")
    ids = torch.cat([lm.encode(p) for p in GENERATE_PROMPTS])
    with lens.capture(lm, sites=[lens.Site.PATTERN], layers=[0, 1]) as cap:
        lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATE_STEPS,
                          do_sample=False, pad_token_id=2)
    assert len(cap.steps) == GENERATE_STEPS
    return cap.save(folder)


def contract_folder(tmp_path_factory) -> Path:
    """The session's contract folder (built on first use, shared by the Panel and browser tests)."""
    if "root" not in _BUILT:
        reuse = os.environ.get("ATTNLENS_CONTRACT")  # a folder build() wrote before (for quick reruns)
        _BUILT["root"] = Path(reuse) if reuse else build(tmp_path_factory.mktemp("contract") / "results")
    return _BUILT["root"]
