"""Learning curves of one or more run directories to a PNG: the same as ``flipes plot``.

python scripts/plot.py runs/cartpole runs/cartpole-seed1 --x timesteps --out curves.png
"""

from flipes.commands import script

if __name__ == "__main__":
    script("plot")
