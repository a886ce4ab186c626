"""Evaluation: pairwise Elo, HHH multiple choice, harmfulness, evasiveness, and the HTML report."""
