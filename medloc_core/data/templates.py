"""Per-dataset grounding queries, target labels and medical prior-knowledge text (VRFT-Aug style)."""

from __future__ import annotations

QUERY_TEMPLATES: dict[str, str] = {
    "ham10000": "Locate the skin lesion in this dermoscopy image.",
    "isic2018": "Locate the skin lesion in this dermoscopy image.",
    "tn3k": "Locate the thyroid nodule in this ultrasound image.",
    "heel": "Locate the calcaneus (heel bone) in this lateral foot X-ray.",
}
GENERIC_QUERY = "Locate the {label} in this image."

TARGET_LABELS: dict[str, str] = {
    "ham10000": "skin lesion",
    "isic2018": "skin lesion",
    "tn3k": "thyroid nodule",
    "heel": "calcaneus",
}

PRIOR_KNOWLEDGE: dict[str, str] = {
    "ham10000": (
        "Dermoscopy shows a magnified view of the skin surface. A skin lesion is a pigmented region, usually "
        "light to dark brown (sometimes blue-grey or pink), whose colour and texture differ from the surrounding "
        "skin; its border can be sharp or irregular and fuzzy. Hairs, bubbles and dark vignette corners are not "
        "part of the lesion."
    ),
    "tn3k": (
        "In thyroid ultrasound, a nodule is a roughly oval or round region inside the thyroid whose echogenicity "
        "differs from the surrounding gland, most often darker (hypoechoic), sometimes with a thin halo, bright "
        "calcification spots or posterior acoustic shadowing or enhancement. Speckle is noise, not a nodule."
    ),
    "heel": (
        "On a lateral foot radiograph bone is brighter than soft tissue. The calcaneus is the largest tarsal "
        "bone, at the back and bottom of the foot below the talus; it forms the heel and has a bright cortical "
        "outline around a textured trabecular interior."
    ),
}
PRIOR_KNOWLEDGE["isic2018"] = PRIOR_KNOWLEDGE["ham10000"]


def default_query(dataset: str, label: str) -> str:
    """The grounding query for a dataset, or a generic one naming the label."""
    return QUERY_TEMPLATES.get(dataset) or GENERIC_QUERY.format(label=label or "target")


def prior_knowledge_for(dataset: str, prior_knowledge: bool | dict[str, str]) -> str | None:
    """``False`` -> none; ``True`` -> the built-in text; a dict overrides/extends the built-in texts
    (map a dataset to ``""`` to switch it off)."""
    if prior_knowledge is False or prior_knowledge is None:
        return None
    texts = dict(PRIOR_KNOWLEDGE)
    if isinstance(prior_knowledge, dict):
        texts.update(prior_knowledge)
    return texts.get(dataset) or None
