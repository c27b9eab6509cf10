"""The room controller. Read the folders in the order a call travels (docs/architecture.md):

``link/`` (node frames in) → ``service.py`` (decide, store, apply) → ``store/`` (the durable log)
→ ``room/`` (state and nurse-call rules) → ``bus.py`` (live fan-out to the API's streams).
``model.py`` holds what crosses those layers; ``security/`` the tokens, TLS and discovery; ``sim/``
the simulated room (firmware in MicroPython, the demo); ``fall_eval/`` the fall-detector
evaluation tool. ``runner.py`` and ``cli.py`` start it all.
"""
