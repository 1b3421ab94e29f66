"""Sampling: LLaVA-Med's round-robin over domains, caps per class, seeded and streaming."""

from __future__ import annotations

from collections import Counter

from medvl.curate.config import SampleConfig
from medvl.curate.sampling import select

DOMAINS = ["chest_xray", "ct_scan", "gross", "histology", "mri"]


def candidates(sizes: dict[str, int], shards: int = 3):
    index = 0
    for domain, size in sizes.items():
        for _ in range(size):
            record = {"id": f"r{index}", "metadata": {"domain": domain, "order": [0, 0, index]}}
            yield index % shards, index // shards, record
            index += 1


def picked_domains(chosen: dict[int, list[int]], sizes: dict[str, int]) -> Counter:
    by_position = {(s, r): rec["metadata"]["domain"] for s, r, rec in candidates(sizes)}
    return Counter(by_position[(shard, row)] for shard, rows in chosen.items() for row in rows)


def test_round_robin_until_max_total_balances_domains():
    sizes = {"chest_xray": 50, "ct_scan": 8, "gross": 30, "histology": 40, "mri": 2}
    config = SampleConfig(by="domain", classes=DOMAINS, max_total=60, shuffle=False)
    chosen, counts = select(candidates(sizes), config)
    domains = picked_domains(chosen, sizes)
    assert sum(domains.values()) == 60
    # small domains are exhausted, the rest share what is left evenly (round-robin)
    assert domains["mri"] == 2 and domains["ct_scan"] == 8
    assert sorted(domains[d] for d in ("chest_xray", "gross", "histology")) == [16, 17, 17]
    assert counts["not_selected"] == sum(sizes.values()) - 60
    assert counts["available"]["chest_xray"] == 50


def test_input_order_without_shuffle_and_seeded_shuffle():
    sizes = {"chest_xray": 20}
    in_order, _ = select(candidates(sizes), SampleConfig(by="domain", cap_per_class=5, shuffle=False))
    assert sorted((s, r) for s, rows in in_order.items() for r in rows) == sorted(
        (i % 3, i // 3) for i in range(5)
    )
    first, _ = select(candidates(sizes), SampleConfig(by="domain", cap_per_class=5, seed=1))
    again, _ = select(candidates(sizes), SampleConfig(by="domain", cap_per_class=5, seed=1))
    other, _ = select(candidates(sizes), SampleConfig(by="domain", cap_per_class=5, seed=2))
    assert first == again and first != other


def test_caps_classes_filter_and_no_limit():
    sizes = {"chest_xray": 10, "ct_scan": 10, "other": 10}
    chosen, counts = select(
        candidates(sizes), SampleConfig(by="domain", cap_per_class=3, classes=["chest_xray", "ct_scan"])
    )
    assert picked_domains(chosen, sizes) == Counter({"chest_xray": 3, "ct_scan": 3})
    everything, counts = select(candidates(sizes), SampleConfig())
    assert sum(len(rows) for rows in everything.values()) == 30 and counts["not_selected"] == 0
    assert all(rows == sorted(rows) for rows in everything.values())
