"""Built-in benchmark names and the hub dataset each one reads (repo id, config, split).

Names follow OpenCompass (`arc_easy_ppl`, `gsm8k_gen`, ...): `_ppl` variants score choices by
log-likelihood, `_gen` variants generate. This table is what `cachekit prefetch --plan` needs
to know; prompts and metrics live with the inference code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetRef:
    repo_id: str
    config: str | None
    split: str
    fewshot_split: str | None = None


CATALOG: dict[str, DatasetRef] = {
    "arc_easy_ppl": DatasetRef("allenai/ai2_arc", "ARC-Easy", "validation", "train"),
    "arc_challenge_ppl": DatasetRef("allenai/ai2_arc", "ARC-Challenge", "validation", "train"),
    "mmlu_ppl": DatasetRef("cais/mmlu", "all", "test", "dev"),
    "piqa_ppl": DatasetRef("ybisk/piqa", None, "validation"),
    "siqa_ppl": DatasetRef("allenai/social_i_qa", None, "validation"),
    "siqa_gen": DatasetRef("allenai/social_i_qa", None, "validation"),
    "gsm8k_gen": DatasetRef("openai/gsm8k", "main", "test", "train"),
    "bbh_gen": DatasetRef("lukaemon/bbh", None, "test"),
    "humaneval_gen": DatasetRef("openai/openai_humaneval", None, "test"),
}


def lookup(name: str) -> DatasetRef:
    from .errors import PlanError

    try:
        return CATALOG[name]
    except KeyError:
        raise PlanError(f"unknown dataset name {name!r}",
                        hint=f"built-in names: {', '.join(sorted(CATALOG))}; or give path/config/split") from None
