"""Train a policy (or any model, with --fitness) with FlipES: the same as ``flipes train``.

    python scripts/train.py --env flipes/CartPole-v1 --seed 0 --out runs/cartpole
    python scripts/train.py --help                      # every option

The loop is ``flipes.train`` (flipes/training.py); this file only starts it.
"""

from flipes.commands import script

if __name__ == "__main__":
    script("train")
