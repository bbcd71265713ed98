"""gymnasium's v5 MuJoCo locomotion envs, batched on MuJoCo Warp (github.com/google-deepmind/mujoco_warp).

``flipes/HalfCheetah-v5``, ``flipes/Hopper-v5``, ``flipes/Walker2d-v5``, ``flipes/Ant-v5`` and
``flipes/Humanoid-v5``: gymnasium's own XML models stepped for N envs at once by MuJoCo Warp, on
the CPU (Warp's CPU backend) or a GPU, with observations, rewards and terminations computed in
torch exactly as gymnasium's ``*_v5.py`` do. ``physics.py`` holds the MuJoCo Warp side,
``locomotion.py`` what the envs share, and one module per body the rest.

Importing this package imports nothing heavy; each body module imports ``warp`` and
``mujoco_warp`` (``pip install 'flipes[warp]'``), which ``gymnasium.make_vec`` does only when one of
these ids is made.
"""
