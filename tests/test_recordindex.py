"""The array ``.idx`` index: the keys and offsets written, the reference parser's errors, a few bytes per key.

Values are checked against the (key, offset) pairs each example writes; errors against
``read_index_lines``, the line-by-line parser the fast path must agree with word for word.
"""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from facemae_plugin.formats import recordindex
from facemae_plugin.formats.errors import RecordIOError
from facemae_plugin.formats.recordindex import RecordIndex, read_index, read_index_lines

REC_SIZE = 4096

keys = st.integers(-5, 40) | st.integers(-(2 ** 63), 2 ** 63 - 1)
offsets = st.integers(0, REC_SIZE // 4 - 1).map(lambda i: 4 * i) | st.integers(-8, REC_SIZE + 8)
canonical = st.tuples(keys, offsets, st.booleans()).map(lambda t: (t[0], t[1], f"{t[0]}\t{t[1]}" + "\r" * t[2]))
odd_lines = st.sampled_from(["", "  ", " 7\t8 ", "--5\t4", "1\t2\t3", "1 2", "x\t4", "\t4", "5\t",
                             "9" * 19 + "\t4", "4\t" + "9" * 20, "-0\t0", "007\t012", "\xe9\t4"])
line = canonical | odd_lines.map(lambda text: (None, None, text))


def write(path, lines, final_newline=True):
    text = "\n".join(text for _, _, text in lines) + ("\n" if final_newline and lines else "")
    path.write_bytes(text.encode("utf-8"))
    return path


def outcome(parse, path):
    try:
        return parse(path, REC_SIZE)
    except RecordIOError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=30), st.booleans())
@example([(1, 0, "1\t0"), (2, 6, "2\t6"), (1, 3, "1\t3")], True)  # line 2 first bad: offset
@example([(1, 0, "1\t0"), (1, 3, "1\t3")], True)  # line 2 both repeats a key and is misaligned
def test_fast_path_gives_the_written_index_or_the_reference_error(tmp_path_factory, lines, final_newline):
    path = write(tmp_path_factory.mktemp("idx") / "a.idx", lines, final_newline)
    fast, reference = outcome(read_index, path), outcome(read_index_lines, path)
    whole, blocks = recordindex._read_canonical(path), recordindex._read_canonical(path, block=5)
    assert (whole is None) == (blocks is None)  # lines cut across blocks parse as they would whole
    if whole is not None:
        assert (whole.first_bad, whole.ascending) == (blocks.first_bad, blocks.ascending)
        whole, blocks = whole.index(), blocks.index()
        assert whole.file_keys.tolist() == blocks.file_keys.tolist()
        assert whole.file_offsets().tolist() == blocks.file_offsets().tolist()
    if isinstance(reference, str):
        assert fast == reference
        return
    assert isinstance(fast, RecordIndex)
    if all(key is not None and max(len(str(abs(key))), len(str(abs(offset)))) <= 18 for key, offset, _ in lines):
        assert recordindex._read_canonical(path) is not None, "a canonical file left the fast path"
        expected = {key: offset for key, offset, _ in lines}
        assert len(expected) == len(lines)  # the reference accepted it: no duplicates
        assert list(fast) == [key for key, _, _ in lines] and dict(fast) == expected
    assert dict(fast) == dict(reference) and fast.file_keys.tolist() == reference.file_keys.tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-50, 50), unique=True, max_size=40), st.lists(st.integers(-60, 60), max_size=20))
def test_lookups_agree_with_a_dict(file_keys, probes):
    offsets = [4 * i for i in range(len(file_keys))]
    index = RecordIndex(file_keys, offsets)
    expected = dict(zip(file_keys, offsets))
    assert [key in index for key in probes] == [key in expected for key in probes]
    assert index.contains_many(probes).tolist() == [key in expected for key in probes]
    present = [key for key in probes if key in expected]
    assert index.offsets_of(present).tolist() == [expected[key] for key in present]
    assert [index.get(key) for key in probes] == [expected.get(key) for key in probes]
    assert index.file_offsets().tolist() == offsets
    assert index.max_key == (max(file_keys) if file_keys else -1)
    if len(present) < len(probes):
        with pytest.raises(KeyError):
            index.offsets_of(probes)


def test_contiguous_keys_are_found_by_arithmetic():
    index = RecordIndex(np.arange(10, 20), np.arange(10) * 8)
    assert index.nbytes == 8 * 10  # the offsets alone
    assert index[15] == 40 and 9 not in index and 20 not in index and "15" not in index
    assert index.contains_many([9, 10, 19, 20]).tolist() == [False, True, True, False]
    assert index.file_keys.tolist() == list(range(10, 20)) and index.max_key == 19


@pytest.mark.parametrize("gaps, order, bytes_per_key", [(False, "ascending", 8), (True, "ascending", 16),
                                                        (False, "shuffled", 16), (True, "shuffled", 24)])
def test_an_index_costs_at_most_24_bytes_per_key(tmp_path, gaps, order, bytes_per_key):
    n = 50_000
    file_keys = np.arange(0, 2 * n, 2) if gaps else np.arange(n)
    if order == "shuffled":
        np.random.default_rng(0).shuffle(file_keys)
    path = tmp_path / "a.idx"
    path.write_text("".join(f"{key}\t{4 * i}\n" for i, key in enumerate(file_keys.tolist())))
    index = read_index(path)
    assert index.nbytes == bytes_per_key * n
    assert index.file_keys.tolist() == file_keys.tolist() and index[int(file_keys[7])] == 28
    assert index.file_offsets().tolist() == list(range(0, 4 * n, 4))


def test_the_reference_parser_refuses_a_double_minus_by_line(tmp_path):
    (tmp_path / "a.idx").write_text("--5\t4\n")
    with pytest.raises(RecordIOError, match=r"a.idx:1: expected 'key<TAB>offset' with two integers, got '--5\\t4'"):
        read_index_lines(tmp_path / "a.idx")
