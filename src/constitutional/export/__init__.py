"""Handing a finished run to the RL engines users run at scale: TRL, verl, OpenRLHF.

`source` reads a run (prompts, SFT rows, labelled preferences), `formats` writes them in each framework's data
format, `scorers` turns our preference model or the constitution-conditioned judge into a reward, and
`trl_reward`, `verl_reward`, `openrlhf_reward` present that reward the way each framework calls one.
"""
