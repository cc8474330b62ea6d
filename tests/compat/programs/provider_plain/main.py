"""A provider's function in plain Python: tagged log lines go to the user's or the provider's logs."""

# ruff: noqa: T201

import json
import os

with open(os.environ["ARGUMENTS_PATH"], encoding="utf-8") as handle:
    arguments = json.load(handle)

print("plain-marker: seen by the user and the provider", flush=True)
print("[PUBLIC] public-marker: seen by the user without its tag", flush=True)
print("[PRIVATE] private-marker: seen by the provider only", flush=True)

with open(os.environ["RESULTS_PATH"], "w", encoding="utf-8") as handle:
    json.dump({"ok": True, "who": arguments.get("who")}, handle)
