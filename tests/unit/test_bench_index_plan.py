"""bench_index's build plan: one build per index type, HNSW once per (M, efConstruction)."""

from bench.bench_index import build_plan


def test_hnsw_variants_are_labelled_by_what_differs_from_the_standing_build():
    plan = build_plan(["FLAT", "HNSW", "IVF_PQ"], 100_000, [16, 32], [200, 400])
    assert [label for label, _, _ in plan] == [
        "FLAT",
        "HNSW",
        "HNSW efC400",
        "HNSW M32",
        "HNSW M32 efC400",
        "IVF_PQ",
    ]
    assert plan[3][1:] == ("HNSW", {"M": 32, "efConstruction": 200})
    assert plan[-1][2] == {"nlist": 1024, "m": 64, "nbits": 8}  # 4 sqrt(100,000) ~ 1,265 -> 1,024


def test_the_default_plan_builds_each_type_once():
    plan = build_plan(["HNSW", "IVF_FLAT"], 1_000_000, [16], [200])
    assert plan == [
        ("HNSW", "HNSW", {"M": 16, "efConstruction": 200}),
        ("IVF_FLAT", "IVF_FLAT", {"nlist": 4096}),
    ]
