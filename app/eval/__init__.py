"""Evaluation: predictions of one model on held-out rows, scored as LLaMA-Factory scores them.

    rows.py      catalogue rows -> (prompt messages, reference answer)
    loading.py   the model to evaluate: base, a run's adapter or checkpoint, a full run, an export, a GGUF
    generate.py  batched, left-padded generation with per-row stopping; teacher-forced loss
    metrics.py   BLEU-4 / ROUGE-1/2/L exactly as LLaMA-Factory computes them (jieba, rouge-chinese, nltk)
    results.py   generated_predictions.jsonl, predict_results.json, eval_rows.jsonl (atomic writes)
    worker.py    `ftstudio eval`: one evaluation run in its own process and run folder
    jobfile.py   what `ftstudio eval X.yaml` means: an LF predict YAML, or "evaluate this training run"
    compare.py   several evaluation runs side by side (tables for the Evaluate tab, CSV)
    judge.py     pairwise LLM-as-judge over an OpenAI-compatible endpoint, positions swapped
"""
