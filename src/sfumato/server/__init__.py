"""`sfumato serve`: one process serving the A1111-compatible API, sfumato's job API and the web UI.

    HTTP request ─> a1111 / jobs_api (validate, resolve options and seeds) ─> JobStore (SQLite)
                                                                                 │ FIFO
    progress, previews <─ Engine.live <─ Engine (ModelManager, txt2img …) <─ Worker (one per device)

`app` builds the FastAPI application, `state` holds its parts, `security` its guards.
"""
