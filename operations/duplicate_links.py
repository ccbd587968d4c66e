"""Union-find over duplicate links: a listing's groups are the connected components.

A group's tier is its strongest link (phash before clip); each member keeps its closest
link of each tier. Only linked images are held, so memory grows with the duplicates found,
not with the collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from operations.stores.sql_duplicate_store import GroupMember, StoredGroup

LISTING_TIERS = ("phash", "clip")  # strongest first


@dataclass
class Links:
    """Union-find over linked images, with each image's closest link of either tier."""

    parent: dict[int, int] = field(default_factory=dict)
    distance: dict[int, int] = field(default_factory=dict)
    score: dict[int, float] = field(default_factory=dict)

    def _find(self, x: int) -> int:
        root = x
        while self.parent.setdefault(root, root) != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression keeps later finds short
            self.parent[x], x = root, self.parent[x]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def add_phash(self, a: int, b: int, distance: int) -> None:
        self._union(a, b)
        for x in (a, b):
            self.distance[x] = min(distance, self.distance.get(x, distance))

    def add_clip(self, a: int, b: int, score: float) -> None:
        self._union(a, b)
        for x in (a, b):
            self.score[x] = max(score, self.score.get(x, score))

    def groups(self) -> list[StoredGroup]:
        """The components in listing order: tier (phash first), larger first, then by first id;
        numbered 1..n, members by id."""
        members: dict[int, list[int]] = {}
        for x in self.parent:
            members.setdefault(self._find(x), []).append(x)
        found = []
        for ids in members.values():
            ids.sort()
            tier = "phash" if any(x in self.distance for x in ids) else "clip"
            found.append((LISTING_TIERS.index(tier), -len(ids), ids[0], tier, ids))
        found.sort()
        return [
            StoredGroup(
                n,
                tier,
                len(ids),
                [GroupMember(x, self.distance.get(x), self.score.get(x)) for x in ids],
            )
            for n, (_, _, _, tier, ids) in enumerate(found, start=1)
        ]
