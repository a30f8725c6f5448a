"""Shared test set-up: never reach a hub (a hub name would spend ~47 s on retries before failing)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
