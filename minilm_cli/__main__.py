"""``python -m minilm_cli`` runs the CLI, as the ``minilm`` script does."""

from .cli import run

run()
