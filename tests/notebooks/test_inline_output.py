"""What the first ``dashboards.show`` puts into a notebook: Panel's bundle once (not under two MIME
types), under 3.5 MB in all, no tqdm warning about ipywidgets; a capture across ``generate()``
shown with its step selector."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    "import torch\nimport lens\nlm = lens.load('tiny-llama')\nids = lm.encode('The cat sat on the mat')\n"
    "with lens.capture(lm, sites=[lens.Site.PATTERN], layers=[1]) as cap:\n"
    "    lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=2)",
    "from attnlens.dashboards import show\nview = show(cap, layer=1, head=0)\nview",
    "view.step = 3\nprint(view.step, len(view.tokens_shown), view.tokens_shown[-1] == cap.meta.generated_tokens[0][2])",
    "show(cap, layer=1, head=1)",
]
LOAD_MIME = "application/vnd.holoviews_load.v0+json"


@pytest.mark.slow
def test_the_first_inline_view_embeds_one_bundle_under_3_5_mb(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    load, first, step, second = nb.cells
    assert not [o for o in load.outputs if "IProgress" in o.get("text", "")]  # no TqdmWarning
    size = len(json.dumps(first.outputs))
    bundles = [o for o in first.outputs if len(json.dumps(o)) > 1_000_000]
    assert len(bundles) == 1 and list(bundles[0]["data"]) == [LOAD_MIME], [list(o["data"]) for o in bundles]
    assert size < 3_500_000, size
    assert len(json.dumps(second.outputs)) < 400_000  # later views carry no bundle
    assert step.outputs[0]["text"].split() == ["3", "26", "True"], step.outputs  # 23 prompt tokens + 3 generated
    print(f"first inline output: {size / 1e6:.2f} MB")
