"""Dataset tools that need a model: insight under a real tokenizer's chat template (`ftstudio data stats`)
and synthetic-data jobs (`ftstudio data generate`: generator backends and the worker).

The pure logic lives in app.data (insight, synth, documents); this package loads tokenizers and models
(app.models, app.chat) and runs jobs (app.train.lifecycle), so it sits above them, beside app.eval.
"""
