"""One module per tab: model, dataset, train, chat, export.

Each exposes `build(ctx: app.ui.context.StudioContext) -> None`, called inside its open gr.Tab by
`app.ui.app.build_app`. See app/ui/context.py for what a tab can read from and register with ctx.
"""
