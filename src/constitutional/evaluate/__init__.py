"""Evaluation: Elo from pairwise judgements, HHH multiple choice, harmfulness, evasiveness, the evaluate stage."""
