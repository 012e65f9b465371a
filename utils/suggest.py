""""Did you mean ...?": the keys nearest to a misspelt one.

A candidate is near when its last part equals the misspelt key's (``lr`` for ``optimizer.lr`` when the key lives
at ``optimizer.base.lr``), when one is the other's initials (``lr`` for ``learning_rate``, ``weight_decay`` for
``wd``), or when difflib finds it close (``epochs`` for ``epoch``, ratio >= 0.75).
"""
import difflib


def initials(name: str) -> str:
    """``learning_rate`` -> ``lr``."""
    return "".join(part[0] for part in name.split("_") if part)


def nearest(key: str, candidates: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` dotted ``candidates`` nearest to the dotted ``key``, the best first."""
    leaf = key.rsplit(".", 1)[-1]
    leaves = {c: c.rsplit(".", 1)[-1] for c in candidates}
    same = [c for c, name in leaves.items() if name == leaf]
    abbreviated = [c for c, name in leaves.items()
                   if ("_" in name and initials(name) == leaf) or ("_" in leaf and initials(leaf) == name)]
    by_leaf = difflib.get_close_matches(leaf, list(dict.fromkeys(leaves.values())), n=n, cutoff=0.75)
    close = [c for name in by_leaf for c, other in leaves.items() if other == name]
    return list(dict.fromkeys(same + abbreviated + close))[:n]
