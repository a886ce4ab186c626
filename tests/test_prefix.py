"""Grouping rows by shared beginnings: the fewest tokens read, never a row's last token, short shares ignored."""

from __future__ import annotations

import itertools

from constitutional.models.prefix import MIN_SHARED_TOKENS, PrefixGroup, group_by_prefix, shared_length

LONG = MIN_SHARED_TOKENS + 10


def tokens_read(sequences, groups: list[PrefixGroup]) -> int:
    return sum(g.length + sum(len(sequences[r]) - g.length for r in g.rows) for g in groups)


def best_possible(sequences) -> int:
    """Brute force over every split of the sorted order into runs: the number the grouping must reach."""
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])
    best = None
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        runs, run = [], [order[0]]
        for cut, row in zip(cuts, order[1:], strict=True):
            if cut:
                runs.append(run)
                run = []
            run.append(row)
        runs.append(run)
        total = 0
        for rows in runs:
            shared = min((shared_length(sequences[a], sequences[b]) for a, b in itertools.pairwise(rows)), default=0)
            usable = min(shared, min(len(sequences[r]) for r in rows) - 1)
            usable = usable if len(rows) > 1 and usable >= MIN_SHARED_TOKENS else 0
            total += sum(len(sequences[r]) for r in rows) - usable * (len(rows) - 1)
        best = total if best is None else min(best, total)
    return best


def test_rows_sharing_a_long_beginning_are_grouped():
    demo_a, demo_b = list(range(1, LONG + 1)), list(range(100, 100 + LONG + 20))
    sequences = [[*demo_a, 7, 8], [*demo_b, 9], [*demo_a, 5], [3, 4, 5], [*demo_b, 1, 2, 3]]
    groups = group_by_prefix(sequences)
    by_rows = {tuple(sorted(g.rows)): g.length for g in groups}
    assert by_rows == {(0, 2): LONG, (1, 4): LONG + 20, (3,): 0}
    assert sorted(r for g in groups for r in g.rows) == list(range(len(sequences)))


def test_short_shared_beginnings_are_not_worth_a_group():
    header = list(range(1, MIN_SHARED_TOKENS))  # one token short of the threshold
    sequences = [header + [50 + i] * 5 for i in range(4)]
    assert all(g.length == 0 and len(g.rows) == 1 for g in group_by_prefix(sequences))


def test_a_row_never_shares_its_last_token():
    row = list(range(1, LONG + 1))
    groups = group_by_prefix([row, [*row, 9, 9], list(row)])
    assert [len(g.rows) for g in groups] == [3]
    assert groups[0].length == LONG - 1


def test_nested_shares_choose_the_split_reading_fewest_tokens():
    # Six rows: all share a header; pairs share a longer demonstration. The deeper pairs must win.
    header = list(range(1, LONG + 1))
    demos = [list(range(200 + 50 * k, 200 + 50 * k + LONG)) for k in range(3)]
    sequences = [header + demos[k] + [900 + i] for k in range(3) for i in range(2)]
    groups = group_by_prefix(sequences)
    assert tokens_read(sequences, groups) == best_possible(sequences)
    assert sorted(g.length for g in groups) == [2 * LONG] * 3


def test_grouping_matches_brute_force_on_mixed_rows():
    base = list(range(1, LONG + 1))
    sequences = [
        base + [1] * 40, base + [1] * 40 + [2], base + [3] * 5, [*list(range(500, 500 + LONG)), 4],
        [*list(range(500, 500 + LONG)), 5], [6], base[:-3] + [7] * 3,
    ]  # fmt: skip
    assert tokens_read(sequences, group_by_prefix(sequences)) == best_possible(sequences)


def test_empty_and_single():
    assert group_by_prefix([]) == []
    assert group_by_prefix([[1, 2, 3]]) == [PrefixGroup([0], 0)]


def test_runs_hold_at_most_max_rows():
    header = list(range(1, LONG + 1))
    sequences = [[*header, i, i] for i in range(50)]
    groups = group_by_prefix(sequences, max_rows=16)
    assert max(len(g.rows) for g in groups) <= 16
    assert all(g.length == LONG for g in groups if len(g.rows) > 1)
    assert sorted(r for g in groups for r in g.rows) == list(range(50))
