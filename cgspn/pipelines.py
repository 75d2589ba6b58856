"""A zero-shot image classification pipeline that knows C-GSPN's loss type.

transformers' stock pipeline works with C-GSPN models as is, but it applies a softmax unless
"siglip" is in `model_type`, pads text to the longest label (SigLIP text towers need max-length
padding), and fails deep inside the tokenizer on an empty label list. This subclass validates the
labels and the hypothesis template, pads for SigLIP text towers to their own context length, and
turns logits into probabilities the way the model was trained: independent sigmoids for
`loss_type="sigmoid"`, a softmax otherwise.

    pipe = pipeline("zero-shot-image-classification", model=folder,
                    pipeline_class=CGSPNZeroShotImageClassificationPipeline)
"""

from __future__ import annotations

import torch
from transformers import ZeroShotImageClassificationPipeline

from .tokenization import text_padding


class CGSPNZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """Zero-shot classification with label validation and loss-type-aware scores."""

    def preprocess(self, image, candidate_labels=None, **kwargs):
        if isinstance(candidate_labels, str):
            candidate_labels = [candidate_labels]
        if not candidate_labels:
            raise ValueError("candidate_labels must be a non-empty list of label strings")
        bad = [label for label in candidate_labels if not isinstance(label, str) or not label.strip()]
        if bad:
            raise ValueError(f"candidate_labels must be non-blank strings, got {bad}")
        template = kwargs.get("hypothesis_template", "This is a photo of {}.")
        if template.count("{}") != 1:
            raise ValueError(
                f"hypothesis_template needs exactly one '{{}}' placeholder for the label, got {template!r}"
            )
        if kwargs.get("tokenizer_kwargs") is None:
            kwargs["tokenizer_kwargs"] = {**text_padding(self.model.config), "truncation": True}
        return super().preprocess(image, candidate_labels=list(candidate_labels), **kwargs)

    def postprocess(self, model_outputs):
        labels = model_outputs["candidate_labels"]
        logits = model_outputs["logits"][0].float()
        if getattr(self.model.config, "loss_type", "softmax") == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits.softmax(dim=-1)
        ranked = sorted(zip(scores.tolist(), labels, strict=True), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked]
