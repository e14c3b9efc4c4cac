"""What a run teaches its model: a label per text, or to continue text (decoders only)."""

CLASSIFICATION = "classification"
CAUSAL_LM = "causal-lm"
TASKS = (CLASSIFICATION, CAUSAL_LM)
