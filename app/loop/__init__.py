"""The continuous fine-tuning loop: feedback on served answers becomes data, data a candidate adapter, and a
candidate that does not score worse than the served one is promoted behind the same model name.

    feedback.py    FeedbackStore: thumbs, corrections -> feedback_sft / feedback_pref catalogue sets
    rows.py        the rows' shape (openai formatting), validation, appending to a registered set
    replay.py      the training mix: feedback rows + a replayed share of the original data
    plans.py       the candidate's training job, the evaluations, the promotion rule
    history.py     versions, attempts and rollbacks (runs/loop/history.jsonl); which version is served
    controller.py  LoopController: status, run_once, rollback

Layer: above app.jobs and app.eval (it submits their jobs), below app.serve (the API follows the history and
records feedback), the CLI and the UI.
"""
