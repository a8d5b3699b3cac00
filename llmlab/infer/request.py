"""The engine's bookkeeping types: a request, its sequences (one per sample) and the events it emits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmlab.infer.detok import TextStream
from llmlab.infer.paged import BlockTable
from llmlab.infer.sampling import SamplingParams

WAITING, PREFILL, RUNNING, SWAPPED, FINISHED = "waiting", "prefill", "running", "swapped", "finished"


@dataclass
class Output:
    """One event for one sequence of a request: a new token (and its text), and/or the end."""
    request_id: str
    index: int  # which of the request's n samples
    token_id: int | None = None
    text: str = ""
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop", "length", "cancelled" (None while running)
    prompt_logprobs: list | None = None  # echo scoring: [(token, logprob | None, top)] per prompt token
    stop_token_id: int | None = None  # set (and token_id None) when the sequence ended on a stop token
    error: str | None = None  # finish_reason "error": this request failed alone (the batch went on)


@dataclass
class Sequence:
    request: "Request"
    index: int
    tokens: list[int]  # prompt + generated; the last one is not in the cache yet while decoding
    generator: torch.Generator
    table: BlockTable = field(default_factory=BlockTable)
    status: str = WAITING
    swapped: list | None = None
    recompute: bool = False  # preempted by recompute: prefill tokens[:-1], then resume decoding
    text: TextStream | None = None
    num_generated: int = 0
    processor: object = None  # the request's logits processor (its own copy per sample)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED


@dataclass
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    prompt_logprobs: int | None = None  # echo scoring (/v1/completions echo+logprobs)
    seqs: list[Sequence] = field(default_factory=list)
    arrival: int = 0
    _plp: list = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.seqs) and all(s.finished for s in self.seqs)
