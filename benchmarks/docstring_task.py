"""A third circuit task for the discrete-SAE comparison: docstring-like argument completion
(Heimersheim & Janiak 2023) on short Python functions, written as a ``.jsonl`` task file, and
SmolLM2's accuracy on it (clean accuracy = the answer is the argmax next token).

    python benchmarks/docstring_task.py --n 40 --out benchmarks/results/science/circuits/docstring

Clean prompt::

    def load(self, files, size, rank, mode):
        \"\"\"Read the table.

        :param files: the first value
        :param size: the second value
        :param

answer `` rank`` (the next argument in the signature). Corrupted: the same prompt with the
signature's arguments renamed to other one-token words (the docstring unchanged), so the
signature no longer names the answer; the distractor is the renamed third argument, what the
corrupted signature would predict. Every name is one token with its leading space, so clean and
corrupted prompts have the same token length.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

WORDS = ["files", "size", "rank", "name", "data", "path", "mode", "key", "value", "count", "index", "text", "user",
         "port", "host", "level", "limit", "token", "title", "color", "width", "height", "shape", "label", "state",
         "model", "table", "query", "items", "source", "target", "order", "group", "style", "scale", "score", "image",
         "block", "field", "price", "owner", "event", "layer", "angle", "speed", "depth", "delay", "cache", "seed"]
FUNCS = ["load", "run", "parse", "build", "check", "update", "read", "write", "send", "open", "plot", "save"]
SUMMARIES = ["Read the table.", "Run the job.", "Build the index.", "Check the values.", "Send the request.",
             "Update the record."]
DESCS = ["the first value", "the input", "the number of items", "a flag", "the name to use", "the limit"]


def one_token_words(tok) -> list[str]:
    return [w for w in WORDS if len(tok(" " + w, add_special_tokens=False).input_ids) == 1
            and len(tok(":" + w, add_special_tokens=False).input_ids) >= 1]


def build(tok, n: int, seed: int = 0) -> list[dict]:
    words = one_token_words(tok)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        args = rng.sample(words, 4)
        other = rng.sample([w for w in words if w not in args], 4)
        f, summary = rng.choice(FUNCS), rng.choice(SUMMARIES)
        d1, d2 = rng.sample(DESCS, 2)
        body = (f'    """{summary}\n\n    :param {args[0]}: {d1}\n    :param {args[1]}: {d2}\n    :param')
        clean = f"def {f}(self, {', '.join(args)}):\n{body}"
        corrupted = f"def {f}(self, {', '.join(other)}):\n{body}"
        out.append({"prompt": clean, "answer": " " + args[2], "corrupted": corrupted, "distractor": " " + other[2]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/science/circuits/docstring")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import lens
    from attnlens.analyses.circuits import encode_task
    from attnlens.analyses.circuits._hooks import Parts
    from attnlens.analyses.circuits.tasks import load_jsonl
    from benchmarks.circuit_task_baselines import measure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = lens.load("smollm2-135m")
    rows = build(lm.tokenizer, args.n, args.seed)
    path = out / "docstring.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = time.perf_counter()
    enc = encode_task(load_jsonl(path, strict=True), lm.tokenizer)
    res = {"docstring": measure(Parts(lm), enc), "seconds": time.perf_counter() - t, "file": str(path)}
    (out / "accuracy.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
