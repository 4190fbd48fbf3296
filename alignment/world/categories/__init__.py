"""The prompt categories of the HHH world, mirroring the SFT mix of MOSS (Table 5)."""

from alignment.world.categories import (
    brainstorming,
    code,
    complex_instruction,
    harmlessness,
    honesty,
    role_play,
    tool_use,
    writing,
)

CATEGORIES = {
    m.NAME: m for m in (brainstorming, complex_instruction, code, role_play, writing, honesty, harmlessness, tool_use)
}
PAPER_MIX = {
    "brainstorming": 0.09, "complex_instruction": 0.09, "code": 0.19, "role_play": 0.23,
    "writing": 0.32, "honesty": 0.01, "harmlessness": 0.07,
}
"""Category shares of the MOSS SFT data (paper Table 5). The tool-use category (MOSS §8) joins it
with ``WorldSpec.tool_share``."""

