"""Constitutional classifiers: a constitution of restricted and permitted content turned into synthetic, augmented
training data; an input classifier over the conversation and a streaming output classifier over the answer, each
with a threshold calibrated to a target false-positive rate; baselines and evaluation (Sharma et al. 2025)."""
