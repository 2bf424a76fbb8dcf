"""Code shipped with a model never runs unless the user says so, and nobody is asked on a terminal.

The folder's config has an ``auto_map`` whose configuration module writes a marker file when it is
imported. Under a pseudo-terminal (where transformers could otherwise prompt), ``lens.load`` and
``lens capture`` refuse in one line and the marker is never written; with
``trust_remote_code=True`` (``lens --trust-remote-code``) the code runs and the model loads.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG_CODE = '''
from pathlib import Path

Path(MARKER_PATH).write_text("the folder's code ran")

from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "evil-llama"
'''

MODEL_CODE = '''
from transformers import LlamaForCausalLM

from .configuration_evil import EvilConfig


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
'''


@pytest.fixture
def remote_code_folder(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lens.zoo import tiny

    torch.manual_seed(0)
    folder = tmp_path / "evil"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=259)).save_pretrained(folder)
    tiny.build_byte_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil-llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    # transformers runs a copy of the folder's code from its module cache: the marker's path is absolute
    (folder / "configuration_evil.py").write_text(CONFIG_CODE.replace("MARKER_PATH", repr(str(folder / "MARKER"))))
    (folder / "modeling_evil.py").write_text(MODEL_CODE)
    return folder


def _under_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python args`` with a pseudo-terminal as stdin, stdout and stderr; (status, output)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf-home")}
    try:
        proc = subprocess.run([sys.executable, *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                              timeout=240)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


LOAD = "import lens, sys; lens.load(sys.argv[1]{extra}); print('LOADED')"


def test_library_refuses_without_running_the_code(remote_code_folder, tmp_path):
    code, out = _under_pty(["-c", LOAD.format(extra=""), str(remote_code_folder)], tmp_path)
    assert code != 0 and "LOADED" not in out, out
    assert "ModelUnavailableError" in out and "ships its own model code (auto_map in config.json)" in out, out
    assert "trust_remote_code=True" in out
    assert not (remote_code_folder / "MARKER").exists()


def test_cli_refuses_in_one_line_without_running_the_code(remote_code_folder, tmp_path):
    code, out = _under_pty(["-m", "lens.cli", "capture", str(remote_code_folder), "--prompt", "hi",
                            "--out", str(tmp_path / "cap")], tmp_path)
    errors = [line[line.index("error:"):] for line in out.splitlines() if "error:" in line]  # after the spinner
    assert code == 2 and len(errors) == 1, out
    assert "auto_map" in errors[0] and "lens --trust-remote-code" in errors[0]
    assert "a bug in attnlens" not in out
    assert not (remote_code_folder / "MARKER").exists()


def test_trusting_runs_the_code_and_loads(remote_code_folder, tmp_path):
    code, out = _under_pty(["-c", LOAD.format(extra=", trust_remote_code=True"), str(remote_code_folder)], tmp_path)
    assert code == 0 and "LOADED" in out, out
    assert (remote_code_folder / "MARKER").read_text() == "the folder's code ran"


def test_cli_flag_trusts(remote_code_folder, tmp_path):
    code, out = _under_pty(["-m", "lens.cli", "--trust-remote-code", "capture", str(remote_code_folder),
                            "--prompt", "hi", "--layers", "0", "--out", str(tmp_path / "cap")], tmp_path)
    assert code == 0, out
    assert (remote_code_folder / "MARKER").exists()
    shutil.rmtree(tmp_path / "cap")
