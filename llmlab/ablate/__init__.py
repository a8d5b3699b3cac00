"""`llmlab ablate`: a grid of small models trained at one compute budget on the speedrun corpus
(llmlab/ablate/grid.py), and the long-context experiment (llmlab/ablate/longctx.py)."""
