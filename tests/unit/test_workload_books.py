"""The workloads' own books, read by the kernel tests: lockwork.fits, which says whether kit's hold
histogram can be the workload's holds, each inside the bucket range its own clock allows."""

from workloads import lockwork


def test_holds_each_in_one_bucket_fit_only_their_exact_histogram():
    ranges = [[4096, 4096]] * 6 + [[32768, 32768]] * 6
    assert lockwork.fits({4096: 6, 32768: 6}, ranges)
    assert not lockwork.fits({4096: 5, 8192: 1, 32768: 6}, ranges)
    assert not lockwork.fits({4096: 6, 32768: 5}, ranges)       # a hold left out
    assert not lockwork.fits({4096: 7, 32768: 6}, ranges)       # one hold too many


def test_a_hold_whose_span_crosses_a_boundary_may_land_on_either_side():
    ranges = [[4096, 4096]] * 5 + [[4096, 8192]] + [[32768, 32768]] * 6
    assert lockwork.fits({4096: 5, 8192: 1, 32768: 6}, ranges)
    assert lockwork.fits({4096: 6, 32768: 6}, ranges)
    assert not lockwork.fits({4096: 4, 8192: 2, 32768: 6}, ranges)  # only one hold may be in 8192


def test_the_earliest_closing_range_takes_the_bucket_first():
    # a greedy that gave bucket 1 to the wide range would leave [1, 1] nowhere to go
    assert lockwork.fits({1: 1, 2: 1}, [[1, 2], [1, 1]])
    assert not lockwork.fits({2: 2}, [[1, 2], [1, 1]])


def test_lockworks_hold_pairs_become_one_range_per_hold_in_kits_bucket_lows():
    from kit.engine import prelude
    book = {"hold_pairs": [[3, 5, 2], [15, 15, 1]]}
    lo3, lo5, lo15 = (prelude.slot_range(s)[0] for s in (3, 5, 15))
    assert lockwork.hold_ranges(book) == [[lo3, lo5], [lo3, lo5], [lo15, lo15]]
