"""The RL methods GLIDER's critic implements and their hyper-parameters, importable without torch
(the CLI reads its option defaults here; ``glider.trainer.critic`` holds the equations)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RLMethod(str, Enum):
    """The critic's update rule, and O2O's method: GLIDER's, or one of the baselines it is compared with."""

    glider = "glider"  # expectile V + TD Q, clipped exp(A/λ) actor weights
    awac = "awac"  # mean (τ = 0.5) V, unclipped weights normalised like AWAC's batch softmax
    ac = "ac"  # V only, the TD error r + γV' − V as a plain policy-gradient weight

    def __str__(self) -> str:  # f"o2o-{method}" is "o2o-glider" on every Python (3.11 changed the default)
        return self.value


@dataclass
class CriticConfig:
    kind: RLMethod = RLMethod.glider
    gamma: float = 0.99
    expectile: float = 0.95  # τ, the authors' default (0.75 in their other configs); awac uses 0.5
    lam: float = 0.1  # λ, the advantage temperature (rewards are on ScienceWorld's 0..1 score scale)
    max_weight: float = 20.0  # w_max
    normalize: bool = True  # rescale the actor's weights to mean 1 over the data (same step size as SFT)
    # ρ: the authors' 0.2 makes the TD critic's fit depend on the heads' seed (demo data: q_loss 0.16 to
    # 1.22 over three seeds) and, on the two-segment test MDP, leaves q_loss at 2e-3 with the detour
    # ranked above the direct path; at 0.05 both fits converge (docs/results.md, the critic probe)
    polyak: float = 0.05
    lr: float = 3e-4
    hidden: int = 256
    batch_size: int = 256
    steps: int = 1500
    reward_scale: float = 1.0
    seed: int = 0
    # where the advantage comes from: "td", the paper's TD-trained Q_φ(s, u) against the expectile V_ψ(s);
    # "mc", the return the decision actually led to (G, discounted, along its episode) against V_ψ(s)
    # fitted by the same expectile loss to G: A = G − V_ψ(s).  On the demo data the TD critic did not
    # rank the decisions (docs/results.md); the observed return does
    advantage: str = "td"

    def __post_init__(self):
        self.kind = RLMethod(self.kind)  # a plain string from a config file or the CLI is checked here
        if self.advantage not in ("td", "mc"):
            raise ValueError(f"unknown advantage {self.advantage!r} (td | mc)")
