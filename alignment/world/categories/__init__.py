"""The prompt categories of the HHH world, mirroring the SFT mix of MOSS (Table 5)."""

from alignment.world.categories import (
    brainstorming,
    code,
    complex_instruction,
    harmlessness,
    honesty,
    role_play,
    writing,
)

CATEGORIES = {
    m.NAME: m for m in (brainstorming, complex_instruction, code, role_play, writing, honesty, harmlessness)
}
PAPER_MIX = {
    "brainstorming": 0.09, "complex_instruction": 0.09, "code": 0.19, "role_play": 0.23,
    "writing": 0.32, "honesty": 0.01, "harmlessness": 0.07,
}
"""Category shares of the MOSS SFT data (paper Table 5)."""

