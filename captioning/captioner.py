"""One loaded model answering Jobs, with the prompt cache that lets a follow-up
question about the same image skip its vision work. Every call must come from
the thread that loaded it (MLX streams are per thread)."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Sequence

from .errors import Exit, Failure, classify
from .job import Job, Result, default_model


class Captioner:
    def __init__(self, model: str | None = None):
        self.model_id = model or default_model()
        self.model = self.processor = None
        self.prompt_cache = None  # the last image's prompt work, for follow-up questions about it

    def load(self) -> "Captioner":
        """Load the model once; Failure(MODEL) names the model and says why not."""
        if self.model is not None:
            return self
        try:
            from mlx_vlm_port import load
            from mlx_vlm_port.prompt_cache import PromptCache

            self.model, self.processor = load(self.model_id)
            self.prompt_cache = PromptCache(max_entries=1)
        except Exception as e:  # ModelLoadError, and anything a broken checkpoint throws
            from mlx_vlm_port.load import ModelLoadError

            message = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            name = self.model_id
            raise Failure(Exit.MODEL, f"cannot load the model{'' if name in message else ' ' + name}: "
                                      f"{message}") from e
        return self

    @property
    def family(self) -> str:
        """The loaded model's model_type ("lfm2_vl" or "idefics3")."""
        return self.load().model.config.model_type

    def prompt(self, question: str, system: str | None = None, n_images: int = 1) -> str:
        messages = [{"role": "system", "content": system}] if system else []
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def stream(self, image, job: Job) -> Iterator:
        """Answer `job` about `image` (a PIL image, or encoded bytes decoded here): yields
        generate.Response pieces."""
        from mlx_vlm_port import stream_generate

        self.load()
        yield from stream_generate(self.model, self.processor, self.prompt(job.prompt, job.system), [image],
                                   sampling=job.sampling, image_options=job.image_options(self.family),
                                   prompt_cache=self.prompt_cache, json_schema=job.json_schema)

    def stream_batch(self, images: Iterable, job: Job | Sequence[Job], batch_size: int | None = None) -> Iterator:
        """Answer `job` (one for every image, or one each: the same sampling and image
        options, any prompts and max_tokens) about each of `images` (read lazily, as batch
        slots open), decoding up to `batch_size` (None: as many as memory allows)
        together: yields (index, generate.Response) as rows advance."""
        from mlx_vlm_port import stream_batch_generate

        jobs = [job] if isinstance(job, Job) else list(job)
        if any(j.json_schema is not None for j in jobs):  # a batch does not hold answers to a schema
            raise ValueError("jobs with a json_schema are answered one at a time (Captioner.run), not in a batch")
        self.load()
        prompts = [self.prompt(j.prompt, j.system) for j in jobs]
        yield from stream_batch_generate(
            self.model, self.processor, prompts[0] if isinstance(job, Job) else prompts, images,
            max_tokens=None if isinstance(job, Job) else [j.sampling.max_tokens for j in jobs],
            sampling=jobs[0].sampling, image_options=jobs[0].image_options(self.family), batch_size=batch_size)

    def run(self, image, job: Job, on_piece: Callable[[str], None],
            cancelled: Callable[[], bool] | None = None, enough: Callable[[], bool] | None = None) -> Result:
        """Answer `job` whole, handing each streamed piece to `on_piece`; Failure on any error.
        `cancelled()` is asked between tokens; True abandons the job (Failure(MODEL, "cancelled")).
        `enough()` too; True ends it as finished ("stop"), e.g. once the caller saw its stop string."""
        tic, pieces, last, finish = time.perf_counter(), [], None, None
        responses = self.stream(image, job)
        try:
            for last in responses:
                if cancelled is not None and cancelled():
                    raise Failure(Exit.MODEL, "cancelled")
                if enough is not None and enough():
                    finish = "stop"
                    break
                if last.text:
                    pieces.append(last.text)
                    on_piece(last.text)
        except Exception as e:
            raise classify(e) from e
        finally:
            responses.close()  # an abandoned generator releases its caches now, not at GC
        return Result("".join(pieces), self.model_id, last.prompt_tokens if last else 0,
                      last.generation_tokens if last else 0, time.perf_counter() - tic,
                      finish or (last.finish_reason if last else None))
