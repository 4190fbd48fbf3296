"""Pure loss and advantage functions (no Ray, no models).

Importing the package imports every loss module, so the registries of ``alignment.losses.registry``
(advantage estimators, policy losses, KL estimators, preference losses) are complete afterwards.
"""

from alignment.losses import (  # noqa: F401  (imported for their registrations)
    dpo,
    gae,
    group_advantages,
    kl,
    lm,
    logprobs,
    masked,
    pairwise,
    ppo,
    quark,
    reward,
)
