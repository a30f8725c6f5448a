"""Forgetting and benchmark measures beyond the task's own exact-match accuracy.

``lm_eval``: lm-evaluation-harness scores of the in-memory model; ``perplexity``: mean token
cross-entropy on held-out source text; ``weights``: intruder dimensions and effective rank of dW.
"""
