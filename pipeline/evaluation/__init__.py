"""Evaluation by metric family, used by the evaluate stage (pipeline/stages/evaluate.py); nothing here imports a
stage. `regional`: figures only the image can win; `controls`: input controls and the null band."""
