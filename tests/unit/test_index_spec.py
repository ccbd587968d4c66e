"""IndexSpec: AUTO is a request that `resolve` turns into a concrete index; stores refuse it."""

from __future__ import annotations

import pytest

from config.settings import load_settings
from operations.domain import AUTO_HNSW_BUILD, AUTO_HNSW_SEARCH, IndexSpec
from operations.errors import InvalidInput
from operations.stores.memory_vector_store import InMemoryVectorStore


def test_auto_resolves_by_expected_size() -> None:
    auto = IndexSpec("AUTO", source_partitions=4).check(allow_auto=True)
    flat = auto.resolve(199_999, 200_000)
    assert (flat.type, flat.build_params, flat.search_params, flat.auto) == ("FLAT", {}, {}, True)
    hnsw = auto.resolve(200_000, 200_000)
    assert hnsw == IndexSpec("HNSW", AUTO_HNSW_BUILD, AUTO_HNSW_SEARCH, 4, auto=True)
    assert auto.resolve(0, 0).type == "HNSW"  # AUTO_INDEX_FLAT_BELOW=0: always HNSW
    assert hnsw.check() is hnsw and flat.check() is flat
    # A concrete type is left as it is, and is not marked as AUTO's choice.
    ivf = IndexSpec("IVF_FLAT", {"nlist": 8})
    assert ivf.resolve(10**9, 1) is ivf and not ivf.auto


def test_auto_takes_no_parameters_and_stores_refuse_it_unresolved() -> None:
    with pytest.raises(InvalidInput, match="AUTO"):
        IndexSpec("AUTO", {"M": 8}).check(allow_auto=True)
    with pytest.raises(InvalidInput, match="AUTO"):
        IndexSpec("AUTO", search_params={"ef": 8}).check(allow_auto=True)
    with pytest.raises(InvalidInput, match="index type"):
        IndexSpec("AUTO").check()
    with pytest.raises(InvalidInput):
        InMemoryVectorStore().create_collection("c", 4, "m", IndexSpec("AUTO"))


def test_settings_take_auto() -> None:
    s = load_settings(index_type="AUTO", auto_index_flat_below=1000)
    assert (s.index_type, s.auto_index_flat_below) == ("AUTO", 1000)


def test_ivf_sq8_takes_the_ivf_parameters_only() -> None:
    sq8 = IndexSpec("IVF_SQ8", {"nlist": 4096}, {"nprobe": 128})
    assert sq8.check() is sq8 and sq8.resolve(10**9, 1) is sq8
    with pytest.raises(InvalidInput, match="IVF_SQ8 takes no build parameter 'M'"):
        IndexSpec("IVF_SQ8", {"M": 16}).check()
    with pytest.raises(InvalidInput, match="IVF_SQ8 takes no search parameter 'ef'"):
        IndexSpec("IVF_SQ8", search_params={"ef": 64}).check()
    assert load_settings(index_type="IVF_SQ8").index_type == "IVF_SQ8"
