"""The frozen CLIP: loading weights (``loading``), dense patch features with no training
(``dense``), and class prompts turned into text embeddings (``prompts``)."""
