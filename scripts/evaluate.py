"""Evaluate a run's center policy, and optionally record a video of it: the same as ``flipes evaluate``.

python scripts/evaluate.py runs/cartpole --checkpoint best --episodes 20 --render cartpole.gif
"""

from flipes.commands import script

if __name__ == "__main__":
    script("evaluate")
