"""Which DINOv2-small layer should tiny-vlm's projector read? Linear probes per layer (docs/vlm.md).

    PYTHONPATH=. python benchmarks/tiny_vlm_layer_probe.py

For 56-px synthetic scenes (tiny-vlm's input size), the hidden state after each block,
pooled two ways (CLS token; mean of the patches), feeds a multinomial logistic
regression (standardised features, L2, full-batch L-BFGS in torch) trained on 480
training scenes and scored on 200 held-out ones, for colour, shape and count.
"""

from __future__ import annotations

import argparse

import torch

from attnlens.analyses import scenes as sc


def probe(train_x, train_y, test_x, test_y, *, l2: float = 1e-2) -> float:
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    n_classes = int(train_y.max()) + 1
    w = torch.zeros(a.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(((b @ w + bias).argmax(-1) == test_y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=480)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--size", type=int, default=56)
    args = p.parse_args()
    torch.set_num_threads(2)
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    import lens
    from lens.zoo.dinov2 import IMAGENET_MEAN, IMAGENET_STD

    vit = lens.load("dinov2-small")
    proc = BitImageProcessorPil(size={"shortest_edge": args.size}, resample=3,
                                crop_size={"height": args.size, "width": args.size},
                                image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    data = {}
    for name, split, n in (("train", sc.Split.TRAIN, args.train), ("test", sc.Split.HELD_OUT, args.test)):
        scenes = list(sc.scenes(split, n))
        hidden = []
        with torch.no_grad():
            for i in range(0, n, 40):
                px = proc(images=[s.image for s in scenes[i:i + 40]], return_tensors="pt").pixel_values
                hidden.append(torch.stack(vit.model(px, output_hidden_states=True).hidden_states))
        labels = {"colour": [list(sc.COLOURS).index(s.colour) for s in scenes],
                  "shape": [sc.SHAPES.index(s.shape) for s in scenes], "count": [s.count - 1 for s in scenes]}
        data[name] = (torch.cat(hidden, dim=1), {k: torch.tensor(v) for k, v in labels.items()})
    print(f"| layer | pooling | colour | shape | count |  ({args.size}-px scenes, {args.train} train / {args.test} "
          "held-out)\n|---|---|---|---|---|")
    for layer in range(2, data["train"][0].shape[0], 2):
        for pool in ("cls", "mean"):
            def feats(h):
                return h[layer][:, 0] if pool == "cls" else h[layer][:, 1:].mean(1)

            acc = {k: probe(feats(data["train"][0]), data["train"][1][k], feats(data["test"][0]), data["test"][1][k])
                   for k in ("colour", "shape", "count")}
            print(f"| {layer} | {pool} | {acc['colour']:.3f} | {acc['shape']:.3f} | {acc['count']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
