"""No network at run time: hub libraries are switched to offline mode before they are imported."""
import os

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def go_offline() -> None:
    """Set the hub variables that make huggingface_hub, datasets and transformers refuse the network."""
    for name, value in OFFLINE_VARIABLES.items():
        os.environ.setdefault(name, value)
