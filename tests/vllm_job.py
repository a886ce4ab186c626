"""Run by tests/test_vllm.py with `.venv-vllm/bin/python` (vLLM's CPU build; PYTHONPATH=src): the `vllm` backend on
the embedded policy in float32, loaded through `load_model` as a recipe would load it.

    vllm_job.py OUT.json < job.json

job.json: {"prompts", "params" (SamplingParams fields), "scored", "choices"}. OUT.json gets the answers to the
prompts, the choice log-probs of the scored prompts, the prompts' token counts and the context window (a file, as
vLLM logs to stdout).
"""

from __future__ import annotations

import functools
import json
import sys


def main() -> None:
    import vllm

    from constitutional.models import ModelSpec, SamplingParams, load_model

    # Graph compilation takes ~2 min on this CPU and changes no result: the test runs the engine eagerly.
    vllm.LLM = functools.partial(vllm.LLM, enforce_eager=True)
    job = json.load(sys.stdin)
    model = load_model(ModelSpec(name="smollm2-135m-instruct", backend="vllm", dtype="float32", context_length=2048))
    greedy = SamplingParams(**job["params"])
    result = {
        "answers": model.generate(job["prompts"], greedy),
        "scores": model.choice_logprobs(job["scored"], job["choices"]),
        "prompt_tokens": model.prompt_tokens(job["prompts"]),
        "context_window": model.context_window,
    }
    model.close()
    with open(sys.argv[1], "w") as out:
        json.dump(result, out)


if __name__ == "__main__":  # vLLM starts its engine in worker processes, which import this file again
    main()
