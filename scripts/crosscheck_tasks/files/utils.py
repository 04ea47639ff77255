"""Functions named by the xf_* task files (`!function utils.NAME`)."""

import re


def _clean(text):
    # HellaSwag's WikiHow contexts carry bracketed artefacts ("[title]", "[step]")
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def process_hellaswag(dataset):
    """Receives and returns a datasets.Dataset: a query and four cleaned endings per row."""

    def one(doc):
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {"query": _clean(doc["activity_label"] + ": " + context),
                "choices": [_clean(e) for e in doc["endings"]],
                "gold": int(doc["label"])}

    return dataset.map(one)


def winogrande_gold(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_continuation(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def winogrande_contexts(doc):
    head = doc["sentence"][:doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]
