"""ViT head analyses on hand-built patterns with known answers, and their invariances."""

import numpy as np
import pytest
import torch

from attnlens.analyses.registry import analyses
from attnlens.analyses.result import Provenance
from attnlens.analyses.vit_heads import (
    VitHeadsError,
    attention_distance,
    cls_concentration,
    kmeans,
    patch_distances,
    pattern_families,
    pruning_importance,
    vit_head_scores,
)
from lens.vision import ImageLayout

LAYOUT = ImageLayout(height=16, width=16, patch_size=4)  # 4x4 grid, 17 tokens
PROV = Provenance(model="hand-built")


def _pattern(patch_rows: torch.Tensor, cls_row: torch.Tensor | None = None, cls_share: float = 0.0):
    """[1, 1, 17, 17]: patch query rows (over patch keys) scaled by 1 - cls_share, the rest on CLS."""
    n = LAYOUT.n_tokens
    p = torch.zeros(1, 1, n, n, dtype=torch.float64)
    p[0, 0, 1:, 1:] = patch_rows * (1 - cls_share)
    p[0, 0, 1:, 0] = cls_share
    p[0, 0, 0, 1:] = torch.full((16,), 1 / 16) if cls_row is None else cls_row
    return p


def _neighbour_rows(step: int) -> torch.Tensor:
    """Each patch attends to the patch ``step`` columns to its right (wrapping to the left)."""
    rows = torch.zeros(16, 16, dtype=torch.float64)
    for q in range(16):
        r, c = divmod(q, 4)
        rows[q, r * 4 + (c + step) % 4] = 1.0
    return rows


def test_mean_distance_has_the_known_values():
    self_only = _pattern(torch.eye(16, dtype=torch.float64), cls_share=0.5)
    uniform = _pattern(torch.full((16, 16), 1 / 16, dtype=torch.float64))
    patterns = {0: self_only, 1: uniform, 2: _pattern(_neighbour_rows(1))}
    res = attention_distance(patterns, LAYOUT, n_layers=3, n_heads=1, provenance=PROV)
    assert res.scores[0, 0] == pytest.approx(0.0)  # CLS share is left out, not counted as distance
    assert res.arrays["patch_mass"][0, 0] == pytest.approx(0.5)
    assert res.scores[1, 0] == pytest.approx(patch_distances(LAYOUT).mean())
    assert res.scores[2, 0] == pytest.approx((3 * 1 + 1 * 3) / 4)  # three steps of 1, one wrap of 3
    np.testing.assert_allclose(res.arrays["profile"].sum(-1), 1.0)
    assert res.arrays["profile"][0, 0, 0] == pytest.approx(1.0)
    assert res.summary["max_possible"] == pytest.approx(np.sqrt(18))


def test_cls_entropy_is_zero_for_one_patch_and_log_n_for_uniform():
    one_hot = torch.zeros(16, dtype=torch.float64)
    one_hot[5] = 0.25  # the rest on CLS: renormalised to one patch
    patterns = {0: torch.cat([_pattern(torch.eye(16, dtype=torch.float64), cls_row=one_hot),
                              _pattern(torch.eye(16, dtype=torch.float64))], dim=1)}
    res = cls_concentration(patterns, LAYOUT, n_layers=1, n_heads=2, provenance=PROV)
    assert res.scores[0, 0] == pytest.approx(0.0, abs=1e-9)
    assert res.scores[0, 1] == pytest.approx(np.log(16))
    assert res.arrays["cls_patch_mass"][0, 0] == pytest.approx(0.25)
    assert res.arrays["cls_map"][0, 0, 1, 1] == pytest.approx(1.0)  # patch 5 is (1, 1)
    np.testing.assert_allclose(res.arrays["normalized_entropy"][0], [0.0, 1.0], atol=1e-9)


def test_permuting_heads_permutes_the_scores():
    g = torch.Generator().manual_seed(0)
    pattern = torch.softmax(torch.randn(2, 5, 17, 17, generator=g, dtype=torch.float64), dim=-1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    for fn in (attention_distance, cls_concentration):
        a = fn({0: pattern}, LAYOUT, n_layers=1, n_heads=5, provenance=PROV)
        b = fn({0: pattern[:, perm]}, LAYOUT, n_layers=1, n_heads=5, provenance=PROV)
        np.testing.assert_allclose(b.scores[0], a.scores[0, perm.numpy()])


def test_families_split_local_from_global_heads_deterministically():
    local, glob = _pattern(torch.eye(16, dtype=torch.float64)), _pattern(torch.full((16, 16), 1 / 16, dtype=torch.float64))
    near = _pattern(_neighbour_rows(1))
    heads = torch.cat([local, glob, near, glob, local, near], dim=1)  # 6 heads
    dist = attention_distance({0: heads, 1: heads.flip(1)}, LAYOUT, n_layers=2, n_heads=6, provenance=PROV)
    fam = pattern_families(dist, k=3, seed=0)
    np.testing.assert_array_equal(fam.scores[0], [0, 2, 1, 2, 0, 1])  # 0 = most local
    np.testing.assert_array_equal(fam.scores[1], fam.scores[0][::-1])
    assert fam.summary["sizes"] == [4, 4, 4]
    assert np.all(np.diff(fam.arrays["family_mean_distance"]) > 0)
    assert fam.scale == "categorical" and fam.categories == ["family 0 (most local)", "family 1 (between)",
                                                             "family 2 (most global)"]
    again = pattern_families(dist, k=3, seed=7)
    np.testing.assert_array_equal(again.scores, fam.scores)


def test_kmeans_rejects_k_outside_the_heads():
    with pytest.raises(VitHeadsError, match="k must be between 1 and the number of heads"):
        kmeans(np.zeros((3, 2)), 4)


def test_pruning_importance_is_one_minus_cosine():
    clean = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    res = pruning_importance(clean, {(0, 1): clean.clone(), (1, 0): -clean}, n_layers=2, n_heads=2, provenance=PROV)
    assert res.scores[0, 1] == pytest.approx(0.0)
    assert res.scores[1, 0] == pytest.approx(2.0)
    assert np.isnan(res.scores[0, 0]) and np.isnan(res.scores[1, 1])
    with pytest.raises(VitHeadsError, match="outside 2 layers x 2 heads"):
        pruning_importance(clean, {(2, 0): clean}, n_layers=2, n_heads=2, provenance=PROV)


def test_a_pattern_of_the_wrong_size_is_refused():
    with pytest.raises(VitHeadsError, match=r"expected \[batch, head, 17, 17\] for a 4x4 grid"):
        attention_distance({0: torch.zeros(1, 1, 10, 10)}, LAYOUT, n_layers=1, n_heads=1, provenance=PROV)


def test_the_vit_analyses_are_registered_and_save(tmp_path):
    names = analyses()
    for name in ("vit_distance", "vit_cls", "vit_families", "vit_pruning"):
        assert name in names
    g = torch.Generator().manual_seed(1)
    patterns = {0: torch.softmax(torch.randn(1, 4, 17, 17, generator=g), dim=-1)}
    results = vit_head_scores(patterns, LAYOUT, n_layers=1, n_heads=4, provenance=PROV, k=2)
    from attnlens.analyses.result import HeadScores

    for r in results:
        loaded = HeadScores.load(r.save(tmp_path))
        np.testing.assert_allclose(loaded.scores, r.scores)
        assert sorted(loaded.arrays) == sorted(r.arrays)


def test_on_a_tiny_vit_capture(tiny_vit):
    import lens
    from lens import vision

    cap = lens.run(tiny_vit, torch.randn(2, 3, 32, 32), sites=[lens.Site.PATTERN]).capture
    layout = vision.layout_of(cap)
    dist, cls, fam = vit_head_scores({layer: cap.pattern(layer) for layer in range(2)}, layout, n_layers=2, n_heads=4,
                                     provenance=PROV, k=2)
    assert dist.scores.shape == cls.scores.shape == fam.scores.shape == (2, 4)
    assert np.all((dist.scores >= 0) & (dist.scores <= dist.summary["max_possible"]))
    assert np.all(cls.scores <= np.log(64) + 1e-9)
