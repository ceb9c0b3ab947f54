"""Export the embedded SmolLM2-135M-Instruct to GGUF and measure size, time and fidelity per quant type.

    python bench/export_gguf.py                       # f16, q8_0 (+ q4_k_m when llama-cpp-python is installed)
    python bench/export_gguf.py --quants f16,bf16,q8_0,q4_k_m,q6_k --backends llama_cpp,transformers

Prints a Markdown table (the README's export figures) and writes the rows as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.export import llamacpp  # noqa: E402
from app.export.fidelity import check_fidelity  # noqa: E402
from app.export.gguf_writer import write_gguf  # noqa: E402


def main() -> None:
    default_quants = "f16,q8_0,q4_k_m" if llamacpp.available() else "f16,q8_0"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--quants", default=default_quants)
    parser.add_argument("--backends", default="auto", help="auto | llama_cpp | transformers, comma-separated")
    parser.add_argument("--out", default=None, help="folder for the GGUF files (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()

    from app.models.source import resolve_model_path

    model_dir = resolve_model_path(args.model)
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="ftstudio-gguf-bench-"))
    rows = []
    print(f"model: {model_dir}\nllama-cpp-python: {'yes' if llamacpp.available() else 'no'}\n")
    print(
        "| quant | backend | write s | size MB | top-1 agreement | ppl HF | ppl GGUF | ppl change | target | passed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for quant in args.quants.split(","):
        start = time.time()
        path = write_gguf(model_dir, out_dir / f"{model_dir.name}-{quant}.gguf", quant)
        seconds = time.time() - start
        for backend in args.backends.split(","):
            fid = check_fidelity(model_dir, path, backend=backend)
            row = {"quant": quant, "write_s": round(seconds, 1), "bytes": path.stat().st_size, **fid}
            rows.append(row)
            print(
                f"| {quant} | {fid['backend']} | {seconds:.1f} | {path.stat().st_size / 1e6:.1f} | "
                f"{fid['agreement']:.2%} | {fid['ppl_reference']:.3f} | {fid['ppl_gguf']:.3f} | "
                f"{fid['ppl_change_pct']:+.2f}% | {fid['target']:.0%} | {'yes' if fid['passed'] else 'NO'} |",
                flush=True,
            )
    print(f"\n{sum(r['n_tokens'] for r in rows[:1])} teacher-forced tokens per check; files in {out_dir}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
