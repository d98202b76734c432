"""Config of a GoEmotions checkpoint with a mean-pooled head (written by the goemotions trainer).

Its own `model_type` keeps transformers from loading the checkpoint as a plain
`BertForSequenceClassification`, whose [CLS] pooler would give different scores without a word:
`AutoModelForSequenceClassification.from_pretrained(dir)` asks for `trust_remote_code=True` instead.
"""
from transformers import BertConfig


class GoEmotionsBertConfig(BertConfig):
    model_type = "goemotions_bert"
