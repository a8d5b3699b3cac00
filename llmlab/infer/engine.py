"""Continuous batching (Yu et al. 2022, Orca; Kwon et al. 2023, vLLM) over the paged KV cache.

Every `step()` is one scheduling round at a token boundary:
1. swapped-out sequences come back first when blocks allow (they were preempted earlier);
2. prefill: waiting requests are admitted in arrival order while the step's prefill token budget
   and the running-sequence limit allow; long prompts go in fixed `prefill_chunk`-token chunks
   (chunked prefill, Agrawal et al. 2023), all the chunks of a step in one forward;
3. decode: every running sequence gets one token (or, speculating, a verified draft: see
   llmlab/infer/speculative.py) in one batched forward. When the pool cannot hold one more token,
   the newest running sequence is preempted: swapped to host memory (`preempt="swap"`, bit-exact
   on resume) or freed and later recomputed (`preempt="recompute"`).
Prefix caching: full blocks are named by a hash chain over their tokens (llmlab/infer/paged.py);
a prompt reuses every leading block already cached; blocks are reference counted; unused cached
blocks are evicted LRU before any live request is preempted; a request whose long prefix another
is prefilling right now waits for it. n > 1 prefills once and forks n copy-on-write sequences.
A logits processor (constrained decoding) runs on its request's rows; if it raises, that request
alone fails. `batching="dynamic"`: a batch forms, runs to its end, then the next is admitted.
"""
from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass, field, replace

import torch

from llmlab.infer.detok import TextStream
from llmlab.infer.paged import BlockTable, NoFreeBlocks, PagedKVCache
from llmlab.infer.request import FINISHED, PREFILL, RUNNING, SWAPPED, WAITING, Output, Request, Sequence
from llmlab.infer.model_runner import ModelRunner
from llmlab.infer.runner import PagedRunner
from llmlab.infer.sampling import SamplingParams, choose, needs_context, top_logprobs
from llmlab.infer.speculative import DraftModel, Fallback, check_same_tokenizer, propose, summary, timer, verify_step

SEED_MASK = 2 ** 64 - 1


@dataclass
class EngineConfig:
    """The engine's settings, declared once (`llmlab serve` nests them; `Engine(**asdict(cfg))`)."""
    max_num_seqs: int = field(default=64, metadata={"help": "sequences decoded together per step"})
    num_blocks: int = field(default=0, metadata={"help": "KV cache blocks (0: max_num_seqs * 512 tokens)"})
    block_size: int = field(default=16, metadata={"help": "tokens per KV block"})
    prefill_chunk: int = field(default=512, metadata={"help": "chunked prefill: tokens of one prompt per step"})
    max_prefill_tokens: int = field(default=1024, metadata={"help": "prompt tokens prefilled per step, all requests"})
    preempt: str = field(default="swap", metadata={"help": "when blocks run out: swap or recompute"})
    prefix_caching: bool = field(default=True, metadata={"help": "reuse the KV blocks of shared prompt prefixes "
                                                                   "across requests (hash-chained full blocks, LRU)"})
    row_pad: int = field(default=8, metadata={"help": "pad decode rows to a multiple (batch-invariant output)"})
    speculative: str = field(default="", metadata={"help": "speculative decoding: '' off, 'ngram' (prompt lookup) "
                                                           "or a draft model with the same tokenizer"})
    num_speculative_tokens: int = field(default=4, metadata={"help": "tokens drafted per step"})
    speculative_fallback: bool = field(default=True, metadata={"help": "measure; decode plainly while "
                                                                       "speculation is slower"})
    batching: str = field(default="continuous", metadata={"help": "continuous (join at any token) or dynamic "
                                                                  "(a batch forms, runs to its end, then the next)"})

    def __post_init__(self):
        for key, ok in (("preempt", ("swap", "recompute")), ("batching", ("continuous", "dynamic"))):
            if getattr(self, key) not in ok:
                raise ValueError(f"{key}: expected '{ok[0]}' or '{ok[1]}', got '{getattr(self, key)}'")
        for key in ("max_num_seqs", "block_size", "prefill_chunk", "max_prefill_tokens", "row_pad",
                    "num_speculative_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0 (0: automatic), got {self.num_blocks}")
        if self.prefill_chunk > self.max_prefill_tokens:
            raise ValueError(f"prefill_chunk ({self.prefill_chunk}) must be <= max_prefill_tokens "
                             f"({self.max_prefill_tokens})")

    def build(self, model, tokenizer) -> "Engine":
        """The engine over `model`; loads the draft model `speculative` names (same tokenizer only)."""
        draft = None
        if self.speculative not in ("", "ngram"):
            from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
            draft, draft_tok = load_model_and_tokenizer(self.speculative, str(next(model.parameters()).device))
            check_same_tokenizer(tokenizer, draft_tok, self.speculative)
        return Engine(model, tokenizer, self, draft_model=draft)


class Engine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None, draft_model=None, **settings):
        """settings: EngineConfig fields overriding `config` (EngineConfig is their one declaration).
        draft_model: the loaded draft when config.speculative names one (EngineConfig.build loads it)."""
        cfg = replace(config or EngineConfig(), **{k: v for k, v in settings.items() if v is not None})
        self.config = cfg
        self.model, self.tok = model, tokenizer
        self.ctx = model.config.max_position_embeddings
        num_blocks = cfg.num_blocks or cfg.max_num_seqs * 512 // cfg.block_size  # 0: 512 tokens per sequence
        self.cache = PagedKVCache.for_model(model, num_blocks, cfg.block_size)
        # zoo variants the fused forward lacks run Transformer.forward per sequence (model_runner.py)
        self.runner = ModelRunner(model, self.cache) if model.config.beyond_llama_gpt() else \
            PagedRunner(model, self.cache, cfg.row_pad)
        self.max_num_seqs, self.prefill_chunk, self.max_prefill_tokens = (cfg.max_num_seqs, cfg.prefill_chunk,
                                                                          cfg.max_prefill_tokens)
        self.preempt_mode, self.prefix_caching = cfg.preempt, cfg.prefix_caching
        if cfg.speculative not in ("", "ngram") and draft_model is None:
            raise ValueError(f"speculative={cfg.speculative!r}: pass the loaded draft model (EngineConfig.build "
                             f"loads it), or use 'ngram' for prompt lookup")
        self.draft = DraftModel(draft_model, model.config.vocab_size) if draft_model is not None else None
        self.spec_k = cfg.num_speculative_tokens if cfg.speculative else 0
        self.fallback = Fallback(cfg.speculative_fallback)
        self.requests: dict[str, Request] = {}
        self.waiting: list[Sequence] = []  # FIFO: new prompts and recompute-preempted sequences
        self.running: list[Sequence] = []  # in the decode batch (or mid-prefill)
        self.swapped: list[Sequence] = []
        self.eos = tokenizer.eos_id if tokenizer is not None else None
        self._ids = itertools.count()
        self.stats = dict.fromkeys(("preempted", "prefix_hit_tokens", "steps", "spec_steps", "spec_drafted",
                                    "spec_accepted", "spec_emitted"), 0)

    def spec_summary(self) -> dict:
        return summary(self.stats, self.fallback)

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    prompt_logprobs: int | None = None, logits_processor=None) -> str:
        """logits_processor (or params.extra["logits_processor"]): processor(generated ids, logits)
        -> logits, applied after penalties (constrained decoding); each sample gets its own copy.
        If it raises, this request alone ends with finish_reason "error"."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        vocab = self.model.config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if len(prompt_ids) >= self.ctx and not (params.max_new_tokens == 0 and len(prompt_ids) <= self.ctx):
            raise ValueError(f"prompt is {len(prompt_ids)} tokens; the context window is {self.ctx}")
        need = -(-min(len(prompt_ids) + params.max_new_tokens, self.ctx) // self.cache.block_size)
        if need > self.cache.alloc.num_blocks:
            raise ValueError(f"request needs {need} KV blocks; the pool has {self.cache.alloc.num_blocks}")
        rid = request_id or f"req-{next(self._ids)}"
        if rid in self.requests:
            raise ValueError(f"duplicate request id {rid}")
        req = Request(rid, list(prompt_ids), params, prompt_logprobs, arrival=next(self._ids))
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        gen = torch.Generator(device=self.runner.device).manual_seed(seed)
        seq = Sequence(req, 0, list(prompt_ids), gen, text=TextStream(params.stop),
                       processor=logits_processor or params.extra.get("logits_processor"))
        req.seqs.append(seq)
        self.requests[rid] = req
        self.waiting.append(seq)
        return rid

    def cancel(self, request_id: str) -> bool:
        """Stop a request now and free its blocks (client went away, or a stop button)."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        for s in req.seqs:
            self._release(s)
            s.status = FINISHED
        return True

    def _release(self, s: Sequence) -> None:
        for q in (self.waiting, self.running, self.swapped):
            if s in q:
                q.remove(s)
        self.cache.free(s.table)
        s.swapped = None
        if self.draft is not None:
            self.draft.drop(id(s))

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    @property
    def num_free_blocks(self) -> int:
        return self.cache.alloc.num_free

    def step(self) -> list[Output]:
        """One scheduling round: swap-in, prefill (chunked), one decode token for all running."""
        out: list[Output] = []
        self.stats["steps"] += 1
        self._swap_in()
        self._prefill(out)
        self._decode(out)
        for rid in [r.id for r in self.requests.values() if r.finished]:
            del self.requests[rid]
        return out

    def _swap_in(self) -> None:
        while self.swapped and len(self.running) < self.max_num_seqs:
            s = self.swapped[0]
            if self.cache.blocks_needed(BlockTable(), s.table.num_tokens + 1) > self.cache.alloc.num_free:
                return
            self.cache.swap_in(s.table, s.swapped)
            s.swapped, s.status = None, RUNNING
            self.swapped.pop(0)
            self.running.append(s)

    def _prefill(self, out: list[Output]) -> None:
        budget = self.max_prefill_tokens
        # sequences mid-prefill continue first (they are in `running` with status PREFILL)
        queue = [s for s in self.running if s.status == PREFILL] + list(self.waiting)
        batch = []  # (sequence, first position, chunk length, target length)
        for s in queue:
            if s.status == WAITING:
                if len(self.running) >= self.max_num_seqs or self.swapped or (
                        self.config.batching == "dynamic" and any(q.status == RUNNING for q in self.running)):
                    break  # dynamic batching: once a batch decodes, later requests wait for its end
                if self._prefix_in_flight(s):
                    continue  # admitted once the shared prefix is cached: computed once, not twice
                self._admit(s)
            target = len(s.tokens) - 1 if s.recompute else len(s.tokens)
            chunk = min(self.prefill_chunk, target - s.table.num_tokens)
            if chunk > budget:
                break  # fixed chunks only: a request's chunk boundaries never depend on the load
            try:
                self.cache.reserve(s.table, s.table.num_tokens + chunk)
            except NoFreeBlocks:
                break
            budget -= chunk
            batch.append((s, s.table.num_tokens, chunk, target))
        if not batch:
            return
        # one forward for all the chunks of this step: their rows share every matmul
        logits_all = self.runner.prefill_many([(s.table, s.tokens[start:start + chunk], s.request.prompt_logprobs
                                                is not None) for s, start, chunk, _ in batch])
        for (s, start, chunk, target), logits in zip(batch, logits_all):
            if s.request.prompt_logprobs is not None:
                self._collect_prompt_logprobs(s, start, logits)
                logits = logits[-1]
            if self.prefix_caching:
                self.cache.register_prefix(s.table, s.tokens)
            if s.table.num_tokens == target:
                s.status = RUNNING
                if s.recompute:
                    s.recompute = False
                else:
                    self._start_decoding(s, logits, out)

    def _prefix_in_flight(self, s: Sequence, min_blocks: int = 8) -> bool:
        """Is a long prefix of s (>= min_blocks blocks) being prefilled right now by another
        request? Then s waits a step or two and reuses it (cache-aware admission)."""
        if not self.prefix_caching or s.request.prompt_logprobs is not None:
            return False
        return any(q.status == PREFILL and q.table.num_tokens < self.cache.block_size * n
                   for q in self.running if (n := self.cache.shared_blocks(s.tokens, q.tokens)) >= min_blocks)

    def _admit(self, s: Sequence) -> None:
        self.waiting.remove(s)
        s.status = PREFILL
        self.running.append(s)
        if self.prefix_caching and s.request.prompt_logprobs is None:
            self.stats["prefix_hit_tokens"] += self.cache.match_prefix(s.tokens[:-1] if s.recompute else s.tokens,
                                                                       s.table)

    def _collect_prompt_logprobs(self, s: Sequence, start: int, logits: torch.Tensor) -> None:
        req, k = s.request, s.request.prompt_logprobs
        if start == 0:
            req._plp.append((s.tokens[0], None, []))
        for j in range(logits.shape[0]):
            p = start + j + 1
            if p < len(req.prompt_ids):
                lp, top = top_logprobs(logits[j], req.prompt_ids[p], k)
                req._plp.append((req.prompt_ids[p], lp, top))

    def _start_decoding(self, s: Sequence, logits: torch.Tensor, out: list[Output]) -> None:
        """The prompt is in the cache: fork the n samples, each takes its first token."""
        req = s.request
        for i in range(1, req.params.n):
            # wrap into manual_seed's 64-bit range (seed 2**64-1 with n > 1 must not overflow)
            seed = (req.params.seed + i) & SEED_MASK if req.params.seed is not None else random.getrandbits(63)
            child = Sequence(req, i, list(s.tokens), torch.Generator(device=self.runner.device).manual_seed(seed),
                             table=self.cache.fork(s.table), status=RUNNING, text=TextStream(req.params.stop),
                             processor=copy.copy(s.processor))
            req.seqs.append(child)
            self.running.append(child)
        for seq in list(req.seqs):
            if seq.finished:  # an earlier sample failed the request
                continue
            o = self._emit(seq, logits, out)
            if req.prompt_logprobs is not None and o is not None:
                o.prompt_logprobs = req._plp  # every sample echoes the same prompt

    def _decode(self, out: list[Output]) -> None:
        batch = [s for s in self.running if s.status == RUNNING]
        if not batch:
            return
        spec = self.spec_k > 0 and self.fallback.use_spec()
        elapsed = timer()
        drafts = {id(s): propose(self, s) for s in batch} if spec else {}
        extra = {k: len(d) for k, (d, _) in drafts.items()}
        if sum(self.cache.blocks_needed(s.table, s.table.num_tokens + 1 + extra.get(id(s), 0))
               for s in batch) > self.cache.alloc.num_free:
            drafts, extra = {}, {}  # no room for drafts: decode one token each rather than preempt
        self._make_room(batch)
        if spec:
            emitted = verify_step(self, batch, drafts, out)
        else:
            emitted = len(batch)
            self._decode_plain(batch, out)
        if self.spec_k > 0:
            self.fallback.record(spec, emitted, elapsed())

    def _make_room(self, batch: list[Sequence]) -> None:
        """Blocks for one more token each; preempt the newest sequences while the pool is short
        (cached prefix blocks nobody uses count as free: evicted LRU before any preemption)."""
        while True:
            need = sum(self.cache.blocks_needed(s.table, s.table.num_tokens + 1) for s in batch)
            if need <= self.cache.alloc.num_free:
                break
            if len(batch) <= 1:  # last resort: give back the blocks of half-prefilled prompts
                mid = [q for q in self.running if q.status == PREFILL]
                if not mid:
                    raise NoFreeBlocks("KV pool too small for a single sequence")
                for q in mid:
                    self.running.remove(q)
                    self.cache.free(q.table)
                    q.status, q.request._plp = WAITING, []
                    self.waiting.insert(0, q)
                continue
            victim = max(batch, key=lambda s: (s.request.arrival, s.index))
            batch.remove(victim)
            self._preempt(victim)

    def _decode_plain(self, batch: list[Sequence], out: list[Output]) -> None:
        for s in batch:
            self.cache.reserve(s.table, s.table.num_tokens + 1)
        logits = self.runner.decode([s.table for s in batch], [s.tokens[-1] for s in batch])
        # greedy rows without penalties: one argmax over the batch instead of one call per row
        plain = [s.request.params.greedy and not needs_context(s.request.params) and s.processor is None
                 for s in batch]
        best = logits.argmax(-1).tolist() if any(plain) else None
        for i, (s, row) in enumerate(zip(batch, logits)):
            if not s.finished:  # a sibling sample may have failed the request in this loop
                self._emit(s, row, out, best[i] if plain[i] else None)

    def _preempt(self, s: Sequence) -> None:
        self.stats["preempted"] += 1
        self.running.remove(s)
        if self.preempt_mode == "swap":
            s.swapped = self.cache.swap_out(s.table)
            s.status = SWAPPED
            self.swapped.append(s)
        else:
            self.cache.free(s.table)
            s.status, s.recompute = WAITING, True
            self.waiting.insert(0, s)

    def _emit(self, s: Sequence, logits: torch.Tensor, out: list[Output], tid: int | None = None) -> Output | None:
        """Choose s's next token from its row (or take `tid`); update text/stop state; an Output."""
        p, req = s.request.params, s.request
        if p.max_new_tokens == 0:
            o = Output(req.id, s.index, finish_reason="length")
            self._finish(s)
            out.append(o)
            return o
        o = Output(req.id, s.index, tid)
        try:  # a failure in this request's sampling is confined to this request
            if tid is None:
                o.token_id = tid = choose(logits, p, s.generator, s.tokens, len(req.prompt_ids), s.processor)
            if p.logprobs is not None:
                o.logprob, o.top_logprobs = top_logprobs(logits, tid, p.logprobs)
        except Exception as e:  # noqa: BLE001 - any error here is this request's alone
            what = "logits processor or sampling" if s.processor is not None else "sampling"
            self._fail(req, f"{what} failed: {e}", out)
            return None
        s.num_generated += 1
        stop_tokens = set(p.stop_token_ids) | ({self.eos} if self.eos is not None and not p.ignore_eos else set())
        if tid in stop_tokens:  # the stop token itself is not part of the output
            o.token_id, o.stop_token_id = None, tid
            o.finish_reason = "stop"
            o.text = s.text.finish()
        else:
            s.tokens.append(tid)
            o.text, hit = s.text.push(self.tok.decode_bytes([tid]) if self.tok is not None else b"")
            if hit:
                o.finish_reason = "stop"
            elif s.num_generated >= p.max_new_tokens or len(s.tokens) >= self.ctx:
                o.finish_reason = "length"
                o.text += s.text.finish()
        if o.finish_reason:
            self._finish(s)
        out.append(o)
        return o

    def _finish(self, s: Sequence) -> None:
        self._release(s)
        s.status = FINISHED

    def _fail(self, req: Request, message: str, out: list[Output]) -> None:
        """End every sample of `req` now with finish_reason "error"; free its blocks. The other
        requests of the batch are untouched (their rows were computed independently)."""
        for s in req.seqs:
            if not s.finished:
                self._finish(s)
        out.append(Output(req.id, 0, finish_reason="error", error=message))

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[list[int]]]:
        """Run prompts concurrently to completion -> per prompt, per sample, the generated ids."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        result = {r: [[] for _ in range(sp.n)] for r, sp in zip(rids, plist)}
        while self.has_work():
            for o in self.step():
                if o.request_id in result and o.token_id is not None:
                    result[o.request_id][o.index].append(o.token_id)
        return [result[r] for r in rids]
