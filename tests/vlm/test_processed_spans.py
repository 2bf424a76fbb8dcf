"""Image spans from processed ids (:mod:`lens._processed`): runs of the image token, assigned to images in
order, a patch grid only where the run is one square grid over its image."""

import pytest

from lens._processed import runs, spans_from_ids
from lens.errors import PromptError

IMG = 9


def test_runs_are_maximal_and_half_open():
    assert runs([1, IMG, IMG, 2, IMG, 3, IMG], IMG) == [(1, 3), (4, 5), (6, 7)]
    assert runs([1, 2], IMG) == []


def test_one_run_per_image_is_a_grid_after_at_most_the_prefix():
    ids = [0] + [IMG] * 17 + [5] + [IMG] * 4
    cls_grid, pooled = spans_from_ids(ids, IMG, 2, max_prefix=1)
    assert (cls_grid.image, cls_grid.start, cls_grid.end, cls_grid.grid, cls_grid.prefix) == (0, 1, 18, (4, 4), 1)
    assert (pooled.image, pooled.grid, pooled.prefix, pooled.mappable) == (1, (2, 2), 0, True)
    # without a CLS token allowed, 17 tokens are not one grid: kept, unmapped
    [odd] = spans_from_ids([IMG] * 17, IMG, 1, max_prefix=0)
    assert not odd.mappable and odd.grid == (1, 17) and odd.labels()[:2] == ["img0:tok0", "img0:tok1"]


def test_tiled_runs_split_into_the_whole_image_grid_and_the_rest():
    [base, tiles] = spans_from_ids([0] + [IMG] * 70, IMG, 1, max_prefix=0, base=16)
    assert (base.start, base.end, base.grid, base.mappable) == (1, 17, (4, 4), True)
    assert (tiles.start, tiles.end, tiles.mappable) == (17, 71, False)


def test_split_images_map_only_their_global_run():
    one_image = ([7] + [IMG] * 4) * 4 + [8] + [IMG] * 4  # four tiles, then the global image
    spans = spans_from_ids(one_image * 2, IMG, 2, max_prefix=0, global_last=True)
    assert [s.image for s in spans] == [0] * 5 + [1] * 5
    assert [s.mappable for s in spans] == ([False] * 4 + [True]) * 2
    assert spans[4].grid == (2, 2)


def test_runs_that_do_not_divide_among_the_images_are_refused():
    with pytest.raises(PromptError, match=r"cannot tell which image tokens belong to which image: 3 runs .* 2 images"):
        spans_from_ids([IMG, 0, IMG, 0, IMG], IMG, 2)
