"""Evaluation by metric family, used by the evaluate stage (pipeline/stages/evaluate.py), the benchmark readers
(pipeline/benchmarks.py) and the one-image commands (pipeline/predict.py); nothing here imports a stage or them
(tests/test_evaluation_imports.py). `embedder`: one model's embeddings; `zeroshot`: prompt-ensemble classification
and the 5x200 subset; `retrieval`: image <-> report and region <-> phrase; `regional`: figures only the image can
win; `robustness`: the true statement against its alternatives; `grounding`: heat maps, dense maps, groundability;
`controls`: input controls and the null band; `report`: report.md and the plots. The bootstrap and the intervals are
in pipeline/stats.py."""
