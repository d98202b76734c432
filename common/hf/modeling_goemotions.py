"""The GoEmotions classifier as the predictor computes it: BERT, mask-aware mean of the last
hidden states, linear head; scores are independent sigmoids (multi-label).

Shipped inside every mean-pooled checkpoint and loaded by
`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)` or
`pipeline("text-classification", model=dir, trust_remote_code=True, top_k=None)`.
"""
import torch
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_goemotions import GoEmotionsBertConfig


class GoEmotionsBertForSequenceClassification(BertPreTrainedModel):
    config_class = GoEmotionsBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        # The checkpoint carries BERT's pooler weights (unused here); keeping the layer loads them
        # without an "unused weights" warning.
        self.bert = BertModel(config, add_pooling_layer=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = torch.nn.Dropout(p)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, inputs_embeds=None, **kwargs):
        # `inputs_embeds` (word embeddings, as BERT takes them) is what attribution methods such
        # as Captum's IntegratedGradients differentiate with respect to.
        if attention_mask is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)
