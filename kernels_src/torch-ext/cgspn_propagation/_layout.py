"""Layout of the operator's inputs (SPEC §2), defined once for every backend of this package.

G (B, H, W, 20*Cc) is viewed as (B, H, W, direction, field, Cc): directions (TD, BU, LR, RL),
fields (lambda, u, wt_prev, wt_self, wt_next); the neighbour weights' normalizer is clamped at
``WEIGHT_EPS``.
"""

NUM_DIRECTIONS = 4
NUM_FIELDS = 5
WEIGHT_EPS = 1e-6
